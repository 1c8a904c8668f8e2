#!/usr/bin/env python3
"""Both nodes lose power; the one with the newest data stays away (issue 16): `volume force-primary` on DRBD 8.4.

Two guests. On node 1 a disk is made through the shim, activated, given `mkfs.ext4 -O mmp`, checksummed files
and the fsync'ed log writer (acknowledgements counted on the host). Both guests are SIGKILLed at once, the
Primary first. Only node 2 boots: its agent brings the replica up, and DRBD 8.4 cannot know what its dead
peer wrote last, so the disk is only Consistent and activation through the shim is refused. Then
`drbdpool volume force-primary` on node 2: refused without --yes (naming what is given up), accepted with
it; node 2 is UpToDate, node 1 marked outdated in the store; the shim activates the disk on node 2, every
acknowledged record (protocol C: each one was on node 2 before its fsync returned) and every checksum is
there, e2fsck is clean. Last, node 1 comes back: it resyncs from node 2 (it wrote nothing node 2 lacks), ends
a connected UpToDate Secondary, and node 2's agent drops its outdated mark.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import ENV, LabError, Result, activate_retrying, elapsed, main, minor_of, pve, pve_try, voldoc  # noqa: E402
from demo import acked, record, start_logger  # noqa: E402

VMID = 101
SIZE_KIB = 256 * 1024
GONE = "DRBDPOOL_NODE_GONE_SECS=5 "   # node 1's silence counts after 5 s instead of 150 (src/replace.rs)


def line(cluster, i, minor):
    m = re.search(rf"^\s*{minor}: (cs:\S+ ro:\S+ ds:\S+)", cluster.check(i, "cat /proc/drbd"), re.M)
    return m.group(1) if m else ""


def test(cluster):
    tl = cluster.timeline
    figures = {"boot both guests (parallel), s": cluster.boot_seconds}
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    vid = f"dp:{vol}"
    path = pve(cluster, 1, "activate", vol)["path"]
    minor = minor_of(path)
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 120)
    sums = cluster.check(1, f"cd /mnt/{VMID} && for n in 1 2; do dd if=/dev/urandom of=f$n bs=1M count=8 "
                            "status=none || exit 1; done && sync && sha256sum f1 f2", 120)
    acks_path = start_logger(cluster, 1, f"/mnt/{VMID}/journal.log")
    tl.mark(f"{vol} Primary on node1: ext4, 16 MiB checksummed, log running ({acked(acks_path)} acknowledged)")

    tl.zero("power loss: node1 and node2 SIGKILLed at once")
    cluster.kill(1)
    cluster.kill(2)
    n_acked = acked(acks_path)
    t = time.time()
    cluster.restart(2)
    cluster.start_agent(2)
    cluster.wait_until(2, "cat /proc/drbd", lambda o: re.search(rf"^\s*{minor}: cs:WFConnection", o, re.M), 180,
                       every=1, what="node2's agent to bring the replica up")
    figures["node2 boots alone + agent brings the replica up, s"] = elapsed(t)
    state = line(cluster, 2, minor)
    figures["node2's replica after the power loss (/proc/drbd)"] = state
    if "ds:UpToDate" in state:
        raise LabError(f"node2 came back {state}: the scenario needs a replica DRBD cannot vouch for")
    tl.mark(f"node2 up alone: {state}")

    ok, r = pve_try(cluster, 2, "activate", vol)
    if ok:
        raise LabError(f"activation on node2 succeeded with {state}")
    figures["activation on node2 before force-primary (refused)"] = r.strip().splitlines()[-1][-200:]

    rc, out, err = cluster.run_full(2, ENV + GONE + f"drbdpool volume force-primary {vid} --node node2", 60)
    if rc != 4 or "--yes" not in err or "node1" not in err:
        raise LabError(f"force-primary without --yes: rc {rc}, {out} {err}")
    if line(cluster, 2, minor) != state:
        raise LabError("the refused force-primary changed DRBD's state")
    t = time.time()
    out = cluster.check(2, ENV + GONE + f"drbdpool volume force-primary {vid} --node node2 --yes", 60)
    figures["force-primary --yes, s"] = elapsed(t)
    tl.mark(f"force-primary: {out.strip().splitlines()[0][:160]}")
    after = line(cluster, 2, minor)
    doc = voldoc(cluster, vol)
    if "ds:UpToDate" not in after or doc.get("outdated") != ["node1"] or (doc.get("forced") or {}).get("node") != "node2":
        raise LabError(f"after force-primary: {after}; outdated {doc.get('outdated')}, forced {doc.get('forced')}")

    # Activation still waits out node1's last Primary report (90 s, protocol/activate.rs), as it does after
    # any failover; with force-primary's default of 150 s of silence that is over before it can run. Here
    # DRBDPOOL_NODE_GONE_SECS let it run sooner, so activate retries as the HA manager would.
    took, tries, _ = activate_retrying(cluster, 2, vol)
    figures["activate on node2 after force-primary (retried every 2 s), s"] = took
    t = time.time()
    cluster.check(2, f"mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 240)
    figures["mount on node2 (MMP wait + journal replay), s"] = elapsed(t)
    if cluster.check(2, f"cd /mnt/{VMID} && sha256sum f1 f2") != sums:
        raise LabError("checksums differ on node2 after force-primary")
    log = cluster.check(2, f"cat /mnt/{VMID}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged records missing or damaged on node2, first {missing[:5]}")
    figures["log records acknowledged before the power loss (all present on node2)"] = n_acked
    cluster.check(2, f"umount /mnt/{VMID}", 60)
    rc, out, err = cluster.run_full(2, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node2 is not clean (rc {rc}):\n{out}\n{err}")
    tl.mark(f"node2 Primary with all {n_acked} acknowledged records and both checksums; e2fsck clean")

    t = time.time()
    cluster.restart(1)
    cluster.start_agent(1)
    cluster.wait_until(1, "cat /proc/drbd",
                       lambda o: re.search(rf"^\s*{minor}: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate", o, re.M),
                       240, every=1, what="node1 back, resynced from node2")
    figures["node1 back: boot + agent + resync from node2, s"] = elapsed(t)
    deadline = time.time() + 60
    while voldoc(cluster, vol).get("outdated"):
        if time.time() > deadline:
            raise LabError(f"node1 resynced but is still marked outdated: {voldoc(cluster, vol).get('outdated')}")
        time.sleep(1)
    figures["node1 resynced -> its outdated mark dropped, s"] = elapsed(t)
    m = re.findall(r"Began resync as SyncTarget \(will sync (\d+) KB", cluster.check(1, "dmesg"))
    figures["KiB node1 resynced from node2"] = int(m[-1]) if m else 0
    tl.mark("node1 is a connected UpToDate Secondary again; its mark is gone")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("power_loss", test, drbdpool=True))
