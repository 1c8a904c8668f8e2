#!/usr/bin/env python3
"""A live node is emptied (issue 16): `drbdpool node evacuate` on real DRBD 8.4, while the guest writes.

Three guests, LVM thin and `drbdpool agent` on each. A 2-replica disk is made on node 1 through the shim
(its second replica on P, node 2 or 3; the third node is Q), activated on node 1, given `mkfs.ext4 -O mmp`
and files with recorded sha256 sums. `node evacuate node1` is refused while the guest runs there (DRBD 8.4
takes two nodes per resource: node 1 would have to leave the resource under the running guest) and names
the migration to do. The guest moves to P (deactivate, activate, mount: an offline migration) and starts an
append-only log with an fsync after every record (acknowledgements counted on the host). `node evacuate
node1 --wait` then moves node 1's replica to Q while the log writer goes on: P's DRBD switches its peer from
node 1 to Q, Q gets a new thin LV with fresh metadata and a full sync from P, node 1 keeps its LV until Q is
UpToDate and then removes it. Then: two UpToDate replicas (P and Q), node 1 holds nothing (no resource, no
LV), `drbdpool check` is clean on every node, the writer never stopped, and the guest moves to Q afterwards:
every acknowledged record and every checksum is there and e2fsck is clean.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import ENV, LabError, Result, elapsed, main, minor_of, proc_drbd, pve, voldoc  # noqa: E402
from demo import acked, record, start_logger, stop_logger  # noqa: E402
from node_replace import raw_link_mib_s  # noqa: E402

VMID = 101
SIZE_KIB = 256 * 1024


def move_guest(cluster, src, dst, vol, path):
    """Offline migration of the guest's disk: unmount and deactivate on src, activate and mount on dst."""
    cluster.check(src, f"umount /mnt/{VMID}", 60)
    pve(cluster, src, "deactivate", vol)
    pve(cluster, dst, "activate", vol)
    cluster.check(dst, f"mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 240)


def test(cluster):
    tl = cluster.timeline
    figures = {"boot three guests (parallel), s": cluster.boot_seconds,
               "VG + thin pool + node add + agents up, s": cluster.setup_seconds}
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    doc = voldoc(cluster, vol)
    res, holders = doc["resource"], [r["node"] for r in doc["replicas"]]
    if "node1" not in holders or len(holders) != 2:
        raise LabError(f"{vol} placed on {holders}, expected node1 and one other")
    p = int(next(n for n in holders if n != "node1")[4:])
    q = next(i for i in (2, 3) if i != p)
    tl.mark(f"{vol} ({res}) on node1 and node{p}; node{q} holds nothing")

    path = pve(cluster, 1, "activate", vol)["path"]
    minor = minor_of(path)
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 120)
    sums = cluster.check(1, f"cd /mnt/{VMID} && for n in 1 2; do dd if=/dev/urandom of=f$n bs=1M count=16 "
                            "status=none || exit 1; done && sync && sha256sum f1 f2", 120)
    tl.mark("node1 Primary: ext4 mounted, 32 MiB checksummed")

    # The guest runs on node1: DRBD 8.4 cannot add Q before node1 leaves; refused, nothing changes.
    gen = voldoc(cluster, vol)["generation"]
    rc, out, err = cluster.run_full(p, ENV + "drbdpool node evacuate node1", 60)
    if rc != 4 or "qm migrate" not in err:
        raise LabError(f"node evacuate with the guest on node1: rc {rc}, {out.strip()} {err.strip()}")
    if voldoc(cluster, vol)["generation"] != gen:
        raise LabError("the refused evacuation changed the volume")
    tl.mark(f"node evacuate node1 refused while the guest runs there: {err.strip().splitlines()[-1][:160]}")

    t = time.time()
    move_guest(cluster, 1, p, vol, path)
    figures[f"guest moved node1 -> node{p} (umount, deactivate, activate, mount), s"] = elapsed(t)
    acks_path = start_logger(cluster, p, f"/mnt/{VMID}/journal.log")
    tl.mark(f"guest on node{p}: log running ({acked(acks_path)} acknowledged)")

    out = cluster.check(p, ENV + "drbdpool node evacuate node1 --dry-run; echo rc=$?", 60)
    if f"would move to node{q}" not in out or "rc=0" not in out:
        raise LabError(f"dry run: {out}")
    before = acked(acks_path)
    tl.zero(f"node evacuate node1 --wait, the guest writing on node{p}")
    t = time.time()
    out = cluster.check(p, ENV + "drbdpool node evacuate node1 --wait", 900)
    took = elapsed(t)
    print(out, flush=True)
    figures[f"node evacuate node1 --wait (store write + full sync of {SIZE_KIB // 1024} MiB to node{q} + removal), s"] = took
    figures["evacuation while the guest writes, MiB of volume per s"] = SIZE_KIB / 1024 / took
    tl.mark(f"evacuation over: {out.strip().splitlines()[-1]}")

    doc = voldoc(cluster, vol)
    now = sorted(r["node"] for r in doc["replicas"])
    if now != sorted([f"node{p}", f"node{q}"]) or doc.get("moving") or doc.get("released"):
        raise LabError(f"after the evacuation: replicas {now}, moving {doc.get('moving')}, released {doc.get('released')}")
    for i, ro in ((p, "Primary/Secondary"), (q, "Secondary/Primary")):
        cluster.wait_until(i, "cat /proc/drbd", lambda _, i=i, ro=ro: (lambda d: d["cs"] == "Connected" and
                           d["ds"] == "UpToDate/UpToDate" and d["ro"] == ro and not d["oos"])(proc_drbd(cluster, i)[minor]),
                           30, every=0.5, what=f"node{i} Connected {ro} UpToDate/UpToDate")
    figures[f"KiB of data received by node{q} in the full sync (nr)"] = proc_drbd(cluster, q)[minor]["nr"]
    # node1 holds nothing of it any more: no DRBD resource, no LV.
    left = cluster.check(1, f"cat /proc/drbd; drbdsetup-84 show {minor} 2>/dev/null; lvs --noheadings -o lv_name ssd")
    if res in left or f"\n{minor}: cs:" in "\n" + left:
        raise LabError(f"node1 still holds {res}:\n{left}")
    for i in (1, 2, 3):
        rc, out, err = cluster.run_full(i, ENV + "drbdpool check", 120)
        if rc != 0:
            raise LabError(f"drbdpool check on node{i} after the evacuation: rc {rc}\n{out}\n{err}")
    link = raw_link_mib_s(cluster, p, q)
    figures[f"raw link node{p} -> node{q} (one TCP stream, 128 MiB, perl on both ends), MiB/s"] = link
    after = acked(acks_path)
    if after <= before + 10:
        raise LabError(f"the log writer on node{p} stalled: {before} acknowledged at the start, {after} now")
    figures["records acknowledged during the evacuation"] = after - before
    tl.mark(f"two UpToDate replicas (node{p}, node{q}); node1 empty; check clean; the writer went on ({after - before} records)")

    # The guest moves to Q afterwards, with its data.
    stop_logger(cluster, p)
    n_acked = acked(acks_path)
    t = time.time()
    move_guest(cluster, p, q, vol, path)
    figures[f"guest moved node{p} -> node{q}, s"] = elapsed(t)
    got = cluster.check(q, f"cd /mnt/{VMID} && sha256sum f1 f2")
    if got != sums:
        raise LabError(f"checksums differ on node{q}:\n{sums}\n{got}")
    log = cluster.check(q, f"cat /mnt/{VMID}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged records missing or damaged on node{q}, first {missing[:5]}")
    figures["log records acknowledged (all present on node Q)"] = n_acked
    cluster.check(q, f"umount /mnt/{VMID}", 60)
    rc, out, err = cluster.run_full(q, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node{q} is not clean (rc {rc}):\n{out}\n{err}")
    tl.mark(f"node{q} has every acknowledged record and checksum; e2fsck clean")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("evacuate", test, n=3, drbdpool=True))
