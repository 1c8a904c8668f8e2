#!/usr/bin/env python3
"""DRBD 9 on three nodes (issue 14): drbdpool + the Perl shim on the DRBD 9.2.18 module (the lab's DRBD 9
flavour, tests/vm/build-drbd9.sh) with LVM thin, node 1 hard-killed.

Three guests, VG `ssd` / thin pool `data` and `drbdpool agent` on each. On node 1 a 3-replica disk is made
the way Proxmox does (alloc_image through PVE::Storage::Custom::DRBDPoolPlugin with drbdpool-replicas 3):
every node must show it UpToDate with nothing resynced (thin: no initial sync). It is activated on node 1,
gets `mkfs.ext4 -O mmp` and an append-only log written with an fsync after every record (each acknowledged
record counted on the host, in /share). Node 1 is powered off while the log is written; on node 2 the disk
is activated through the shim (two of three replicas: DRBD's quorum holds), the file system checks clean
and every acknowledged record is there; node 3 stays a connected, UpToDate Secondary of the new Primary.
Then quorum (issue 14): node 3 is powered off too, and node 2, one replica of three, must lose quorum: a
write with fsync there fails (on-no-quorum io-error: no silent writes), and activating a second, idle
3-replica disk there is refused with a message about quorum. Node 3 boots again: node 2 regains quorum,
the idle disk activates, and node 3 is Connected and UpToDate for both resources (no split brain).
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import LabError, Result, activate_retrying, alloc_ready, elapsed, main, pve, pve_try, voldoc  # noqa: E402
from demo import acked, record, start_logger  # noqa: E402

SIZE_KIB = 256 * 1024
R3 = {"DP_REPLICAS": "3"}


def events(cluster, i, res):
    """`drbdsetup events2 --now --statistics <res>` as [(kind, {key: value})] (DRBD 9 words)."""
    out = cluster.check(i, f"drbdsetup events2 --now --statistics {res}", 30)
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "exists":
            continue
        rows.append((parts[1], dict(p.split(":", 1) for p in parts[2:] if ":" in p)))
    return rows


def view(cluster, i, res):
    """(role, disk, {peer: (connection, peer-disk)}, KiB received + sent by resync/replication so far)."""
    rows = events(cluster, i, res)
    role = next((d["role"] for k, d in rows if k == "resource"), "?")
    disk = next((d["disk"] for k, d in rows if k == "device"), "?")
    conns = {d["conn-name"]: d["connection"] for k, d in rows if k == "connection"}
    peers = {d["conn-name"]: (conns.get(d["conn-name"], "?"), d.get("peer-disk", "?")) for k, d in rows if k == "peer-device"}
    moved = sum(int(d.get("received", 0)) + int(d.get("sent", 0)) for k, d in rows if k == "peer-device")
    return role, disk, peers, moved


def test(cluster):
    tl = cluster.timeline
    figures = {"boot three DRBD 9 guests (parallel), s": cluster.boot_seconds,
               "VG + thin pool + node add + agents up, s": cluster.setup_seconds}
    for i in (1, 2, 3):
        v = cluster.check(i, "head -1 /proc/drbd")
        if not v.startswith("version: 9."):
            raise LabError(f"node{i} runs {v!r}, not DRBD 9")
    tl.mark(f"three nodes on {cluster.check(1, 'head -1 /proc/drbd')}")

    vol, call, ready = alloc_ready(cluster, 1, 101, SIZE_KIB, env=R3, timeout=180)
    figures["create a 3-replica disk (alloc_image through the shim), call / ready, s"] = f"{call:.1f} / {ready:.1f}"
    path = pve(cluster, 1, "path", vol)["path"]
    res = voldoc(cluster, vol)["resource"]
    moved = 0
    for i in (1, 2, 3):
        role, disk, peers, m = view(cluster, i, res)
        moved += m
        bad = {p: s for p, s in peers.items() if s != ("Connected", "UpToDate")}
        if disk != "UpToDate" or len(peers) != 2 or bad:
            raise LabError(f"{vol} on node{i} after alloc: {role} {disk}, peers {peers}")
    figures["KiB resynced or replicated at creation (all nodes)"] = moved
    if moved:
        raise LabError(f"{vol}: {moved} KiB moved between the replicas at creation; a thin volume needs no initial sync")
    tl.mark(f"{vol} ({res}) UpToDate on all three nodes, nothing resynced")
    idle = alloc_ready(cluster, 1, 102, SIZE_KIB, env=R3, timeout=180)[0]  # for the quorum part
    idle_res = voldoc(cluster, idle)["resource"]
    # Issue 18: a full resync of a thin replica discards zeroes instead of writing them only while the
    # kernel keeps rs-discard-granularity. The in-tree 8.4 wrapped a thin LV's discard limit and turned it
    # off (src/drbd/discard.rs; crash_resync); DRBD 9 must keep what the resource file sets.
    for i in (1, 2, 3):
        m = re.search(r"rs-discard-granularity\s+(\d+)", cluster.check(i, f"drbdsetup show {res}"))
        off = re.findall(r"rs_discard_granularity (?:changed to 0|feature disabled)", cluster.check(i, "dmesg"))
        if not m or int(m.group(1)) == 0 or off:
            raise LabError(f"node{i}: DRBD 9 runs {res} without rs-discard-granularity "
                           f"(drbdsetup show: {m.group(0) if m else 'absent'}; kernel log: {off})")
        figures[f"rs-discard-granularity in node{i}'s DRBD 9 kernel, bytes"] = int(m.group(1))

    t = time.time()
    pve(cluster, 1, "activate", vol)
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/101 && mount {path} /mnt/101", 120)
    figures["activate + mkfs.ext4 -O mmp + mount on node1, s"] = elapsed(t)
    acks_path = start_logger(cluster, 1, "/mnt/101/journal.log")
    tl.mark(f"append-only log running on node1 ({acked(acks_path)} records acknowledged)")

    tl.zero("node1 powered off (SIGKILL of its qemu) while the log is written")
    cluster.kill(1)
    n_acked = acked(acks_path)
    tl.mark(f"{n_acked} records acknowledged before the power-off")
    cluster.wait_until(2, f"drbdsetup events2 --now {res}", lambda o: "conn-name:node1 connection:Connected" not in o, 60,
                       every=0.2, what="node2 to lose node1")
    figures["peer loss noticed by node2, s"] = tl.mark("node2 lost node1")

    took, tries, last = activate_retrying(cluster, 2, vol)
    figures["activate on the survivor node2 (through the shim), s"] = took
    figures["activation attempts on node2"] = tries
    if tries > 1:
        figures["first refusal on node2"] = last[-300:]
    tl.mark(f"{vol} activated on node2 after {tries} attempt(s)")
    role, disk, peers, _ = view(cluster, 2, res)
    if role != "Primary" or disk != "UpToDate" or peers.get("node3") != ("Connected", "UpToDate"):
        raise LabError(f"node2 after activation: {role} {disk}, peers {peers}")
    role3, disk3, _, _ = view(cluster, 3, res)
    if role3 != "Secondary" or disk3 != "UpToDate":
        raise LabError(f"node3 after the takeover: {role3} {disk3}")

    t = time.time()
    cluster.check(2, f"mkdir -p /mnt/101 && mount {path} /mnt/101", 240)
    figures["mount on node2 (MMP wait + journal replay), s"] = elapsed(t)
    log = cluster.check(2, "cat /mnt/101/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged records missing or damaged, first {missing[:5]}")
    figures["log records acknowledged before the power-off"] = n_acked
    tl.mark(f"all {n_acked} acknowledged records present on node2")
    cluster.check(2, "umount /mnt/101", 60)
    rc, out, err = cluster.run_full(2, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node2 is not clean (rc {rc}):\n{out}\n{err}")
    tl.mark("e2fsck clean; node3 UpToDate Secondary of the new Primary")
    quorum_lost_and_back(cluster, vol, res, path, idle, idle_res, figures)
    return Result(figures)


def quorum(cluster, i, res):
    """DRBD 9's quorum of res's device on node i (events2 `quorum:yes|no`)."""
    return next((d.get("quorum") for k, d in events(cluster, i, res) if k == "device"), "?")


def quorum_lost_and_back(cluster, vol, res, path, idle, idle_res, figures):
    """Issue 14: node1 is dead; node3 is killed too. node2 alone is one of three: it loses quorum, its I/O
    fails instead of going on silently, and activation of the idle volume there is refused naming quorum.
    node3 back: quorum returns, the idle volume activates on node2, both resources Connected and UpToDate
    (no split brain)."""
    tl = cluster.timeline
    cluster.check(2, f"mount {path} /mnt/101", 240)
    tl.zero("node3 powered off too: node2 is one replica of three")
    cluster.kill(3)
    cluster.wait_until(2, "true", lambda _: quorum(cluster, 2, res) == "no", 60, every=0.5, what="node2 to lose quorum")
    figures["node3 killed -> node2 without quorum, s"] = tl.mark("node2 lost quorum")
    rc, out, err = cluster.run_full(2, "dd if=/dev/zero of=/mnt/101/after-quorum bs=4k count=1 conv=fsync status=none", 60)
    if rc == 0:
        raise LabError("a write with fsync on node2 succeeded without quorum: I/O must not go on silently")
    figures["a write + fsync on node2 without quorum"] = f"failed (rc {rc}): {err.strip()[-120:]}"
    ok, r = pve_try(cluster, 2, "activate", idle)
    if ok or "quorum" not in r.lower():
        raise LabError(f"activation of {idle} on node2 without quorum: {'succeeded' if ok else r}")
    figures["activation on node2 without quorum (refused)"] = r.strip().splitlines()[-1][-220:]
    tl.mark("node2 without quorum: the write failed, activation refused naming quorum")

    t = time.time()
    cluster.restart(3)
    cluster.start_agent(3)
    cluster.wait_until(2, "true", lambda _: quorum(cluster, 2, idle_res) == "yes", 180, every=1,
                       what="node2 to regain quorum")
    figures["node3 back (boot + agent) -> node2 has quorum again, s"] = elapsed(t)
    took, tries, _ = activate_retrying(cluster, 2, idle, limit=120)
    figures["activation of the idle volume on node2 with quorum back, s"] = took
    for r in (res, idle_res):
        cluster.wait_until(2, "true", lambda _, r=r: view(cluster, 2, r)[2].get("node3") == ("Connected", "UpToDate"),
                           120, every=1, what=f"node3 connected and UpToDate for {r}")
    tl.mark(f"quorum back: {idle} activated on node2; node3 Connected UpToDate for both, no split brain")


if __name__ == "__main__":
    sys.exit(main("drbd9_three", test, n=3, drbdpool=True, drbd=9))
