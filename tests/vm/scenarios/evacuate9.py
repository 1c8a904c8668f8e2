#!/usr/bin/env python3
"""A live node is emptied on DRBD 9 with its guest running there (issue 16): `drbdpool node evacuate`, then
`drbdpool volume replicas`, on the DRBD 9.2.18 module (tests/vm/build-drbd9.sh) with LVM thin.

Three guests, `drbdpool agent` on each. A 2-replica disk is made on node 1 through the shim (its second
replica on P; the third node is Q), activated on node 1, given `mkfs.ext4 -O mmp`, files with recorded sha256
sums and the fsync'ed log writer (acknowledgements counted on the host). `node evacuate node1` with the
guest running there: Q joins the resource as a third peer and syncs in full while node 1 stays Primary and
the writer goes on; node 1's replica stays as long as the guest runs on it (the document still lists it,
its DRBD shows two peers). The guest then moves to Q (stop, unmount, deactivate on node 1, activate and
mount on Q): every checksum and acknowledged record is there; node 1's replica goes (no resource, no LV),
P and Q stay Connected UpToDate, `drbdpool check` is clean. Then `volume replicas VOL 3` gives node 1 a
replica again (full sync) and `volume replicas VOL 2` drops the least useful one, not Q's (in use).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import ENV, LabError, Result, elapsed, main, pve, voldoc  # noqa: E402
from demo import acked, record, start_logger, stop_logger  # noqa: E402
from drbd9_three import view  # noqa: E402

VMID = 101
SIZE_KIB = 256 * 1024


def wait_doc(cluster, vol, cond, limit, what):
    t = time.time()
    while not cond(voldoc(cluster, vol)):
        if elapsed(t) > limit:
            raise LabError(f"{what}: not reached in {limit} s; document {voldoc(cluster, vol)}")
        time.sleep(0.5)
    return elapsed(t)


def settled(cluster, i, res, peers):
    """Node i's DRBD shows res UpToDate with exactly `peers`, each Connected and UpToDate."""
    cluster.wait_until(i, "true", lambda _: (lambda v: v[1] == "UpToDate" and sorted(v[2]) == sorted(peers) and
                       all(s == ("Connected", "UpToDate") for s in v[2].values()))(view(cluster, i, res)),
                       120, every=1, what=f"node{i}: {res} UpToDate with peers {peers} Connected UpToDate")


def test(cluster):
    tl = cluster.timeline
    figures = {"boot three DRBD 9 guests (parallel), s": cluster.boot_seconds,
               "VG + thin pool + node add + agents up, s": cluster.setup_seconds}
    for i in (1, 2, 3):
        v = cluster.check(i, "head -1 /proc/drbd")
        if not v.startswith("version: 9."):
            raise LabError(f"node{i} runs {v!r}, not DRBD 9")
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    wait_doc(cluster, vol, lambda d: d["state"] == "ready", 180, "the disk ready")
    doc = voldoc(cluster, vol)
    res, holders = doc["resource"], [r["node"] for r in doc["replicas"]]
    if "node1" not in holders or len(holders) != 2:
        raise LabError(f"{vol} placed on {holders}, expected node1 and one other")
    p = int(next(n for n in holders if n != "node1")[4:])
    q = next(i for i in (2, 3) if i != p)
    tl.mark(f"{vol} ({res}) on node1 and node{p}; node{q} holds nothing")

    path = pve(cluster, 1, "activate", vol)["path"]
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 120)
    sums = cluster.check(1, f"cd /mnt/{VMID} && for n in 1 2; do dd if=/dev/urandom of=f$n bs=1M count=16 "
                            "status=none || exit 1; done && sync && sha256sum f1 f2", 120)
    acks_path = start_logger(cluster, 1, f"/mnt/{VMID}/journal.log")
    tl.mark(f"node1 Primary: ext4, 32 MiB checksummed, log running ({acked(acks_path)} acknowledged)")

    before = acked(acks_path)
    tl.zero("node evacuate node1 with the guest running on node1")
    t = time.time()
    out = cluster.check(p, ENV + "drbdpool node evacuate node1", 60)
    print(out, flush=True)
    if f"moving to node{q}" not in out:
        raise LabError(f"evacuate: {out}")
    cluster.wait_until(q, "true", lambda _: view(cluster, q, res)[1] == "UpToDate", 600, every=1,
                       what=f"node{q}'s new replica UpToDate")
    took = elapsed(t)
    figures[f"node evacuate node1: node{q} joined and UpToDate (full sync of {SIZE_KIB // 1024} MiB), s"] = took
    tl.mark(f"node{q} UpToDate {took:.1f} s after the command")
    time.sleep(6)  # a few agent rounds: node1's replica must stay while the guest runs there
    doc = voldoc(cluster, vol)
    role, disk, peers, _ = view(cluster, 1, res)
    if not doc.get("moving") or "node1" not in [r["node"] for r in doc["replicas"]] or role != "Primary" \
            or sorted(peers) != sorted([f"node{p}", f"node{q}"]):
        raise LabError(f"while the guest runs on node1: document {doc}, node1 {role} {disk} peers {peers}")
    during = acked(acks_path) - before
    if during <= 10:
        raise LabError(f"the log writer on node1 stalled during the sync: {during} records")
    figures["records acknowledged on node1 while node3 synced"] = during
    tl.mark(f"node1 still Primary with peers {sorted(peers)}; its replica stays; the writer went on ({during} records)")

    # The guest moves to Q afterwards, with its data; then node1's replica goes.
    stop_logger(cluster, 1)
    n_acked = acked(acks_path)
    t = time.time()
    cluster.check(1, f"umount /mnt/{VMID}", 60)
    pve(cluster, 1, "deactivate", vol)
    pve(cluster, q, "activate", vol)
    cluster.check(q, f"mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 240)
    figures[f"guest moved node1 -> node{q}, s"] = elapsed(t)
    got = cluster.check(q, f"cd /mnt/{VMID} && sha256sum f1 f2")
    if got != sums:
        raise LabError(f"checksums differ on node{q}:\n{sums}\n{got}")
    log = cluster.check(q, f"cat /mnt/{VMID}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged records missing or damaged on node{q}, first {missing[:5]}")
    figures["log records acknowledged (all present on node Q)"] = n_acked
    t = time.time()
    wait_doc(cluster, vol, lambda d: not d.get("moving") and not d.get("released") and
             sorted(r["node"] for r in d["replicas"]) == sorted([f"node{p}", f"node{q}"]), 120, "the move over")
    figures["guest off node1 -> node1's replica dropped and removed, s"] = elapsed(t)
    for i, others in ((p, [f"node{q}"]), (q, [f"node{p}"])):
        settled(cluster, i, res, others)
    rc, st, _ = cluster.run_full(1, f"drbdsetup status {res}", 30)
    lvs = cluster.check(1, "lvs --noheadings -o lv_name ssd").split()
    if rc == 0 or res in lvs:
        raise LabError(f"node1 still holds {res}: drbdsetup status rc {rc} {st}; LVs {lvs}")
    for i in (1, 2, 3):
        rc, out, err = cluster.run_full(i, ENV + "drbdpool check", 120)
        if rc != 0:
            raise LabError(f"drbdpool check on node{i} after the evacuation: rc {rc}\n{out}\n{err}")
    tl.mark(f"node{q} has every record and checksum; node1 empty; node{p} + node{q} UpToDate; check clean")

    # volume replicas: 3 (node1 gets one again, full sync), then 2 (not Q's: the guest runs there).
    t = time.time()
    out = cluster.check(q, ENV + f"drbdpool volume replicas {vol} 3 --wait", 600)
    figures["volume replicas 3 --wait (node1 synced in full), s"] = elapsed(t)
    for i, others in ((1, [f"node{p}", f"node{q}"]), (p, ["node1", f"node{q}"]), (q, ["node1", f"node{p}"])):
        settled(cluster, i, res, others)
    t = time.time()
    out = cluster.check(q, ENV + f"drbdpool volume replicas {vol} 2 --wait", 300)
    figures["volume replicas 2 --wait, s"] = elapsed(t)
    now = sorted(r["node"] for r in voldoc(cluster, vol)["replicas"])
    if f"node{q}" not in now or len(now) != 2:
        raise LabError(f"after volume replicas 2: {now}; {out}")
    gone = next(n for n in ("node1", f"node{p}") if n not in now)
    stay = next(n for n in now if n != f"node{q}")
    settled(cluster, q, res, [stay])
    tl.mark(f"volume replicas 3 then 2: {gone} dropped, replicas {now}")
    cluster.check(q, f"umount /mnt/{VMID}", 60)
    rc, out, err = cluster.run_full(q, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node{q} is not clean (rc {rc}):\n{out}\n{err}")
    tl.mark("e2fsck clean")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("evacuate9", test, n=3, drbdpool=True, drbd=9))
