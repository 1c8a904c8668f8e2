#!/usr/bin/env python3
"""Live migration: the dual-primary window opens only for PVE_MIGRATED_FROM and closes when the source lets go.

One volume made through the shim on node 1, activated there (Primary), ext4 (MMP) and an append-only log
written with an fsync after every record (acknowledgements counted on the host). Asserted:
- a plain activate on node 2 (no PVE_MIGRATED_FROM) while node 1 is Primary is refused, naming node 1;
- an activate on node 2 with PVE_MIGRATED_FROM=node1 (what qemu-server sets on a live migration's target
  before activate_volumes) succeeds while node 1 is still Primary and writing: both are Primary, the kernel
  of both has allow-two-primaries (`drbdsetup-84 show`);
- node 1 stops its writer, unmounts and deactivates through the shim (the source closes the device): the
  window closes — the store has no dual_primary any more and, once the agents applied it, neither kernel
  allows two primaries; node 2 is the only Primary;
- every acknowledged record is readable on node 2, and the log's checksum equals node 1's.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import acked, record, start_logger, stop_logger  # noqa: E402
from dp import (LabError, Result, drbdsetup_show, elapsed, main, minor_of, proc_drbd, pve,  # noqa: E402
                pve_try, voldoc)

VMID = 401
SIZE_KIB = 256 * 1024
MNT = f"/mnt/{VMID}"
TWO = re.compile(r"allow-two-primaries\s+yes")


def test(cluster):
    figures = {"boot both guests (parallel), s": cluster.boot_seconds}
    tl = cluster.timeline
    tl.mark("both nodes registered, thin pools ready, agents running")
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    path = pve(cluster, 1, "activate", vol)["path"]
    minor = minor_of(path)
    res = voldoc(cluster, vol)["resource"]
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p {MNT} && mount {path} {MNT}", 120)
    for i in (1, 2):
        if TWO.search(drbdsetup_show(cluster, i, res)):
            raise LabError(f"node{i} allows two primaries for {res} before any migration")
    tl.mark(f"{vol} ({path}) Primary on node1, ext4 (MMP) mounted; no dual-primary on either kernel")

    acks = start_logger(cluster, 1, f"{MNT}/journal.log")
    tl.mark(f"writer running on node1 ({acked(acks)} records acknowledged)")

    # ---- a plain activate on the other node is refused
    ok, msg = pve_try(cluster, 2, "activate", vol)
    if ok:
        raise LabError(f"plain activate on node2 while node1 is Primary SUCCEEDED: {msg}")
    if "node1" not in msg or "Primary" not in msg:
        raise LabError(f"plain activate on node2 refused, but the message does not say node1 is Primary: {msg}")
    tl.mark(f"plain activate on node2 REFUSED: {msg.split('exited', 1)[-1].strip()[-220:]}")
    if proc_drbd(cluster, 2)[minor]["ro"].startswith("Primary"):
        raise LabError("node2 is Primary after a refused activate")

    # ---- the migration target activates with PVE_MIGRATED_FROM
    tl.zero("live migration: activate on node2 with PVE_MIGRATED_FROM=node1 (node1 Primary, writing)")
    n0 = acked(acks)
    r = pve(cluster, 2, "activate", vol, env={"PVE_MIGRATED_FROM": "node1"})
    figures["activate on the migration target (opens the window), s"] = tl.mark(
        f"node2 activated ({r['path']}) in {r['seconds']}s")
    p1, p2 = proc_drbd(cluster, 1)[minor], proc_drbd(cluster, 2)[minor]
    if p1["ro"] != "Primary/Primary" or p2["ro"] != "Primary/Primary":
        raise LabError(f"during the window: node1 {p1['ro']}, node2 {p2['ro']}; want Primary/Primary on both")
    for i in (1, 2):
        if not TWO.search(drbdsetup_show(cluster, i, res)):
            raise LabError(f"node{i}'s kernel does not allow two primaries during the window:\n"
                           + drbdsetup_show(cluster, i, res))
    dp = voldoc(cluster, vol).get("dual_primary")
    if not dp or dp.get("source") != "node1" or dp.get("target") != "node2":
        raise LabError(f"store's dual_primary during the window is {dp}")
    tl.mark(f"dual-primary window: Primary/Primary, allow-two-primaries yes on both kernels, store {dp}")
    cluster.wait_until(1, "true", lambda o: acked(acks) >= n0 + 20, 60, every=0.5,
                       what="node1's writes to go on during the window")
    tl.mark(f"node1 keeps writing during the window ({acked(acks) - n0} records since it opened)")

    # ---- the source stops and lets go
    stop_logger(cluster, 1)
    n_acked = acked(acks)
    lines = cluster.check(1, f"cat {MNT}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(lines) or lines[n - 1] != record(n)]
    if missing:
        raise LabError(f"node1: {len(missing)} acknowledged records missing/damaged, first {missing[:5]}")
    sum1 = cluster.check(1, f"sha256sum {MNT}/journal.log").split()[0]
    cluster.check(1, f"umount {MNT}", 60)
    t = time.time()
    pve(cluster, 1, "deactivate", vol)
    figures["deactivate on the source (closes the window), s"] = elapsed(t)
    tl.mark(f"node1 stopped the writer ({n_acked} acknowledged), unmounted and deactivated")
    dp = voldoc(cluster, vol).get("dual_primary")
    if dp:
        raise LabError(f"the store still has a dual-primary window after the source deactivated: {dp}")
    for i in (1, 2):
        cluster.wait_until(i, "s=$(ls /usr/lib/drbd/drbdsetup-84 /lib/drbd/drbdsetup-84 2>/dev/null | head -1); "
                              f'"$s" show {res}', lambda o: o.strip() and not TWO.search(o), 60, every=0.5,
                           what=f"node{i}'s kernel to forbid two primaries again")
    figures["deactivate -> allow-two-primaries off on both kernels, s"] = elapsed(t)
    p1, p2 = proc_drbd(cluster, 1)[minor], proc_drbd(cluster, 2)[minor]
    if p2["ro"] != "Primary/Secondary" or p1["ro"] != "Secondary/Primary":
        raise LabError(f"after the window: node1 {p1['ro']}, node2 {p2['ro']}; want node2 the only Primary")
    if p1["cs"] != "Connected" or p2["ds"] != "UpToDate/UpToDate":
        raise LabError(f"after the window: node1 {p1}, node2 {p2}")
    tl.mark("window closed: store dual_primary none, allow-two-primaries off on both kernels, "
            "node2 the only Primary (Connected, UpToDate/UpToDate)")
    time.sleep(3 * float(os.environ.get("LAB_AGENT_INTERVAL", "2")))
    for i in (1, 2):
        if TWO.search(drbdsetup_show(cluster, i, res)):
            raise LabError(f"node{i}'s kernel allows two primaries again a few agent rounds after the window")
    tl.mark("still off on both kernels after three more agent rounds")

    t = time.time()
    cluster.check(2, f"mkdir -p {MNT} && mount {path} {MNT}", 180)
    figures["mount on node2 after the migration, s"] = elapsed(t)
    sum2 = cluster.check(2, f"sha256sum {MNT}/journal.log").split()[0]
    lines2 = cluster.check(2, f"cat {MNT}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(lines2) or lines2[n - 1] != record(n)]
    if sum1 != sum2 or missing:
        raise LabError(f"node2 reads the log differently: sha256 {sum1} vs {sum2}, missing {missing[:5]}")
    cluster.check(2, f"umount {MNT}", 60)
    rc, out, err = cluster.run_full(2, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node2 not clean (rc {rc}):\n{out}\n{err}")
    figures["acknowledged records (all on node2)"] = n_acked
    figures["window open to verified on node2, s"] = tl.mark(
        f"node2: log sha256 equal ({sum2[:16]}...), all {n_acked} records, fsck clean")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("live_migration", test, drbdpool=True))
