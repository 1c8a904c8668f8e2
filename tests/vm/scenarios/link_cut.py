#!/usr/bin/env python3
"""Replication link cut while the Primary writes: fence-peer outdates the peer, no split brain, resync heals.

Two guests with drbdpool agents; one volume made through the shim on node 1, activated there (Primary),
ext4 (MMP) and an append-only log written with an fsync after every record (acknowledgements counted on
the host). Then ONLY the replication link between the guests goes down (the NIC in both guests); the
shared store (9p, the quorate pmxcfs stand-in) stays reachable for both. Expected and asserted:
- node 1's DRBD runs the fence-peer handler (`drbdpool fence-peer`), which records node 2 as outdated in
  the store (`drbdpool volume show` -> `outdated`), and node 1's writes go on;
- activating the volume on node 2 through the shim is refused, with a message naming node 1 as the node
  with the good data;
- the link comes back: the resource reconnects, node 2 resyncs from node 1 (SyncTarget) and is UpToDate,
  the after-resync-target handler (`drbdpool unfence-peer`) drops its outdated mark, no split brain in
  either kernel log;
- the writer stops; every acknowledged record is on node 1's device; after a handover through the shim
  (deactivate on 1, activate on 2) the log reads the same on node 2 (equal checksum, every record).
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import acked, record, start_logger, stop_logger  # noqa: E402
from dp import LabError, Result, elapsed, main, minor_of, proc_drbd, pve, pve_try, voldoc  # noqa: E402

VMID = 301
SIZE_KIB = 256 * 1024
MNT = f"/mnt/{VMID}"


def nic(cluster, i):
    """The guest's NIC toward its peer (2 guests: exactly one)."""
    devs = cluster.check(i, "ls /sys/class/net | grep '^eth'").split()
    if len(devs) != 1:
        raise LabError(f"node{i}: expected one replication NIC, have {devs}")
    return devs[0]


def show(cluster, i, vol):
    return json.loads(cluster.check(i, f". /etc/drbdpool.env; drbdpool volume show dp:{vol}", 30))


def wait_acks(path, more_than, timeout, what):
    deadline = time.time() + timeout
    while acked(path) <= more_than:
        if time.time() > deadline:
            raise LabError(f"{what}: the writer acknowledged nothing beyond record {more_than} in {timeout} s")
        time.sleep(0.5)
    return acked(path)


def test(cluster):
    figures = {"boot both guests (parallel), s": cluster.boot_seconds}
    tl = cluster.timeline
    tl.mark("both nodes registered, thin pools ready, agents running")
    t = time.time()
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    figures["create the volume through the shim, s"] = elapsed(t)
    path = pve(cluster, 1, "activate", vol)["path"]
    minor = minor_of(path)
    res = voldoc(cluster, vol)["resource"]
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p {MNT} && mount {path} {MNT}", 120)
    tl.mark(f"{vol} ({path}, resource {res}) Primary on node1, ext4 (MMP) mounted")

    acks = start_logger(cluster, 1, f"{MNT}/journal.log")
    tl.mark(f"writer running on node1 ({acked(acks)} records acknowledged)")

    # ---- cut only the replication link (the 9p store stays reachable for both)
    devs = {i: nic(cluster, i) for i in (1, 2)}
    tl.zero("replication link cut (NIC down in both guests) while node1 writes")
    cluster.par(lambda i: cluster.check(i, f"ip link set {devs[i]} down"))
    n_cut = acked(acks)
    cluster.wait_until(1, "cat /proc/drbd", lambda o: re.search(rf"^\s*{minor}: cs:(?!Connected)", o, re.M),
                       90, every=0.5, what="node1 to lose the connection")
    figures["connection loss noticed by node1, s"] = tl.mark(
        f"node1 lost the connection ({proc_drbd(cluster, 1)[minor]['cs']}); {n_cut} records acked at the cut")
    deadline = time.time() + 90
    while "node2" not in show(cluster, 1, vol).get("outdated", []):
        if time.time() > deadline:
            raise LabError(f"node2 not recorded outdated 90 s after the cut: {show(cluster, 1, vol)}\n"
                           + cluster.check(1, "dmesg | grep -i -e fence -e helper | tail -20"))
        time.sleep(0.5)
    figures["fence-peer recorded node2 outdated in the store, s"] = tl.mark(
        "fence-peer handler ran on node1: `drbdpool volume show` lists node2 as outdated")
    helper = cluster.check(1, "dmesg | grep -i 'fence-peer' | tail -2").strip().replace("\n", " | ")
    tl.mark(f"node1's kernel log: {helper[-300:]}")
    n_fenced = acked(acks)
    n_more = wait_acks(acks, n_fenced + 19, 60, "after the fence")
    figures["records acknowledged between the cut and the fence"] = n_fenced - n_cut
    tl.mark(f"node1's I/O goes on: {n_more - n_fenced} more records acknowledged after the fence")
    p1 = proc_drbd(cluster, 1)[minor]
    if not p1["ro"].startswith("Primary") or not p1["ds"].startswith("UpToDate"):
        raise LabError(f"node1 is {p1['ro']} {p1['ds']} after the cut, want Primary UpToDate")

    # Node 2 (Secondary, idle) notices the loss only by DRBD's ping timeout; until then it still shows
    # node 1 Connected and Primary. Try after it noticed: then only the store's mark stands in the way.
    cluster.wait_until(2, "cat /proc/drbd", lambda o: re.search(rf"^\s*{minor}: cs:(?!Connected)", o, re.M),
                       90, every=0.5, what="node2 to lose the connection")
    p2 = proc_drbd(cluster, 2)[minor]
    figures["connection loss noticed by node2, s"] = tl.mark(
        f"node2 lost the connection too: {p2['cs']} {p2['ro']} {p2['ds']}")
    ok, msg = pve_try(cluster, 2, "activate", vol)
    if ok:
        raise LabError(f"activate on node2 (cut off, outdated) SUCCEEDED: {msg}")
    if "node1" not in msg or "outdated" not in msg:
        raise LabError(f"activate on node2 refused, but the message does not name node1 as the node with "
                       f"the good data and node2 as outdated: {msg}")
    refusal = msg.split("exited", 1)[-1].strip()
    tl.mark(f"activate on node2 through the shim REFUSED: {refusal[-260:]}")
    p2 = proc_drbd(cluster, 2)[minor]
    if p2["ro"].startswith("Primary"):
        raise LabError(f"node2 became Primary despite the refusal: {p2}")
    figures["node2 after the refusal"] = f"{p2['cs']} {p2['ro']} {p2['ds']}"

    # ---- restore the link
    time.sleep(3)
    n_restore = acked(acks)
    tl.mark(f"link restored after {n_restore - n_cut} records acknowledged during the cut")
    peer = {1: 2, 2: 1}
    cluster.par(lambda i: cluster.check(i, f"ip link set {devs[i]} up && "
                                           f"ip route replace 10.99.0.{peer[i]}/32 dev {devs[i]}"))
    t = time.time()
    cluster.wait_until(2, "cat /proc/drbd", lambda o: re.search(
        rf"^\s*{minor}: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate", o, re.M), 240, every=0.5,
        what="node2 to reconnect and resync to UpToDate")
    figures["link restored -> node2 Connected and UpToDate, s"] = elapsed(t)
    nr = proc_drbd(cluster, 2)[minor]["nr"]
    tl.mark(f"node2 reconnected and UpToDate ({nr} KiB received from node1 in all: replication before the cut + resync)")
    deadline = time.time() + 60
    while "node2" in (doc := show(cluster, 2, vol)).get("outdated", []):
        if time.time() > deadline:
            raise LabError(f"node2's outdated mark still in the store 60 s after its resync: {doc}")
        time.sleep(0.5)
    figures["resync done -> outdated mark dropped, s"] = elapsed(t)
    tl.mark(f"after-resync-target (drbdpool unfence-peer) dropped node2's outdated mark: "
            f"outdated={doc.get('outdated')}")
    d1, d2 = cluster.check(1, "dmesg"), cluster.check(2, "dmesg")
    for n, d in ((1, d1), (2, d2)):
        if re.search(r"split-brain", d, re.I):
            raise LabError(f"node{n} logged a split brain:\n" + "\n".join(x for x in d.splitlines() if "plit" in x))
    if not re.search(r"SyncTarget|sync target", d2):
        raise LabError("node2 never was SyncTarget after the link came back:\n" +
                       "\n".join(d2.splitlines()[-30:]))
    tl.mark("no split brain in either kernel log; node2 was SyncTarget")

    # ---- stop the writer, verify on node1, hand over to node2, verify there
    stop_logger(cluster, 1)
    n_acked = acked(acks)
    lines = cluster.check(1, f"cat {MNT}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(lines) or lines[n - 1] != record(n)]
    if missing:
        raise LabError(f"node1: {len(missing)} acknowledged records missing/damaged, first {missing[:5]}")
    sum1 = cluster.check(1, f"sha256sum {MNT}/journal.log").split()[0]
    tl.mark(f"writer stopped: all {n_acked} acknowledged records on node1's device")
    cluster.check(1, f"umount {MNT}", 60)
    pve(cluster, 1, "deactivate", vol)
    t = time.time()
    pve(cluster, 2, "activate", vol)
    cluster.check(2, f"mkdir -p {MNT} && mount {path} {MNT}", 180)
    figures["handover: activate + mount on node2, s"] = elapsed(t)
    sum2 = cluster.check(2, f"sha256sum {MNT}/journal.log").split()[0]
    lines2 = cluster.check(2, f"cat {MNT}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(lines2) or lines2[n - 1] != record(n)]
    if sum1 != sum2 or missing:
        raise LabError(f"node2 reads the log differently: sha256 {sum1} vs {sum2}, missing {missing[:5]}")
    figures["acknowledged records (all present on both)"] = n_acked
    figures["acknowledged during the cut (before the link came back)"] = n_restore - n_cut
    cluster.check(2, f"umount {MNT}", 60)
    rc, out, err = cluster.run_full(2, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node2 not clean (rc {rc}):\n{out}\n{err}")
    figures["cut to verified on node2, s"] = tl.mark(
        f"handover to node2: log sha256 equal ({sum2[:16]}...), all {n_acked} records, fsck clean")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("link_cut", test, drbdpool=True))
