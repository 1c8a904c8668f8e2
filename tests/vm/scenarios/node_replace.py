#!/usr/bin/env python3
"""A node dies for good and another takes its replicas (issue 16): `drbdpool node replace` on real DRBD 8.4.

Three guests, LVM thin and `drbdpool agent` on each. On node 2 a 2-replica disk is made through the shim
(its second replica lands on node 1 or node 3: the peer P; the third node is Q), activated, given
`mkfs.ext4 -O mmp`, files with recorded sha256 sums and an append-only log with an fsync after every record
(acknowledgements counted on the host). P is powered off while the log is written; the guest on node 2
keeps running. `node replace P Q` is refused while P looks alive and, once P is gone, moves the replica:
the survivor's DRBD drops P and connects to Q, Q gets a new thin LV with fresh metadata and is synced in
full from node 2 while the log writer goes on. Then: two UpToDate replicas (node 2 and Q), the log writer
never stopped, and Q holds the data: node 2 lets the disk go, Q activates it, every acknowledged record and
every checksum is there and e2fsck is clean.
"""
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import ENV, LabError, Result, elapsed, main, minor_of, proc_drbd, pve, voldoc  # noqa: E402
from demo import acked, record, start_logger, stop_logger  # noqa: E402

VMID = 101
SIZE_KIB = 256 * 1024
# A node whose agent stopped this long ago may be replaced (src/replace.rs; 150 s by default: the lab
# kills the node and goes on).
GONE = "DRBDPOOL_NODE_GONE_SECS=5 "


# The raw replication link for comparison: MIB MiB over one TCP connection from guest src to guest dst, with
# perl on both ends (the guests have no iperf3); the receiver counts what it got.
SINK = ("perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(LocalPort => 5001, Listen => 1, ReuseAddr => 1) or die; "
        "$c = $l->accept; $n += $r while ($r = sysread($c, $b, 1 << 20)); print \"$n\\n\"' >/tmp/sink.out 2>&1")
# The sender retries its connect for 10 s: the sink may not listen yet on a slow guest.
SEND = ("perl -MIO::Socket::INET -e 'for (1 .. 50) {{ $s = IO::Socket::INET->new(PeerAddr => \"10.99.0.{dst}:5001\") "
        "and last; select(undef, undef, undef, 0.2) }} $s or die \"$!\"; "
        "$b = \"\\0\" x (1 << 20); syswrite($s, $b) == length($b) or die for 1 .. {mib}'")


def raw_link_mib_s(cluster, src, dst, mib=128):
    cluster.check(dst, f"setsid sh -c {shlex.quote(SINK)} </dev/null >/dev/null 2>&1 &")
    time.sleep(1)
    t = time.time()
    cluster.check(src, SEND.format(dst=dst, mib=mib), 300)
    cluster.wait_until(dst, "cat /tmp/sink.out", lambda o: o.strip().isdigit(), 60, every=0.2, what="the sink to finish")
    took = elapsed(t)
    got = int(cluster.check(dst, "cat /tmp/sink.out").strip())
    if got != mib << 20:
        raise LabError(f"the raw link test moved {got} bytes, not {mib << 20}")
    return mib / took


def test(cluster):
    tl = cluster.timeline
    figures = {"boot three guests (parallel), s": cluster.boot_seconds,
               "VG + thin pool + node add + agents up, s": cluster.setup_seconds}
    t = time.time()
    vol = pve(cluster, 2, "alloc", VMID, SIZE_KIB)["volname"]
    figures["create the disk on node2 (alloc_image through the shim), s"] = elapsed(t)
    doc = voldoc(cluster, vol)
    res, holders = doc["resource"], [r["node"] for r in doc["replicas"]]
    if "node2" not in holders or len(holders) != 2:
        raise LabError(f"{vol} placed on {holders}, expected node2 and one other")
    p = int(next(n for n in holders if n != "node2")[4:])
    q = next(i for i in (1, 3) if i != p)
    tl.mark(f"{vol} ({res}) on node2 and node{p}; node{q} holds nothing")

    path = pve(cluster, 2, "activate", vol)["path"]
    minor = minor_of(path)
    cluster.check(2, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 120)
    sums = cluster.check(2, f"cd /mnt/{VMID} && for n in 1 2; do dd if=/dev/urandom of=f$n bs=1M count=16 "
                            "status=none || exit 1; done && sync && sha256sum f1 f2", 120)
    acks_path = start_logger(cluster, 2, f"/mnt/{VMID}/journal.log")
    tl.mark(f"node2 Primary: ext4 mounted, 32 MiB checksummed, log running ({acked(acks_path)} acknowledged)")

    # While P is alive, nothing moves.
    rc, out, err = cluster.run_full(2, ENV + GONE + f"drbdpool node replace node{p} node{q}", 60)
    if rc == 0 or "gone for good" not in err:
        raise LabError(f"node replace with node{p} alive: rc {rc}, {out.strip()} {err.strip()}")
    if [r["node"] for r in voldoc(cluster, vol)["replicas"]] != holders:
        raise LabError("the refused node replace changed the volume")
    tl.mark(f"node replace refused while node{p} is alive: {err.strip().splitlines()[-1][:160]}")

    tl.zero(f"node{p} powered off for good (SIGKILL of its qemu); the guest on node2 goes on writing")
    cluster.kill(p)
    before = acked(acks_path)
    cluster.wait_until(2, "cat /proc/drbd", lambda o: "cs:Connected" not in o, 60, every=0.2,
                       what=f"node2 to lose node{p}")
    figures[f"node{p}'s loss noticed by node2, s"] = tl.mark(f"node2 lost node{p}")
    time.sleep(6)  # past GONE since node p's agent last reported

    out = cluster.check(2, ENV + GONE + f"drbdpool node replace node{p} node{q} --dry-run; echo rc=$?", 60)
    if f"would move to node{q}" not in out or "rc=0" not in out:
        raise LabError(f"dry run: {out}")
    t = time.time()
    out = cluster.check(2, ENV + GONE + f"drbdpool node replace node{p} node{q} --wait", 900)
    took = elapsed(t)
    figures[f"node replace node{p} node{q} --wait (store write + full sync of {SIZE_KIB // 1024} MiB), s"] = took
    figures["full sync to the new node while the guest writes, MiB/s"] = SIZE_KIB / 1024 / took
    tl.mark(f"node replace done: {out.strip().splitlines()[-1]}")
    print(out, flush=True)

    doc = voldoc(cluster, vol)
    now = [r["node"] for r in doc["replicas"]]
    if now != ["node2", f"node{q}"]:
        raise LabError(f"replicas after node replace: {now}")
    # node q reported UpToDate; each kernel ends the resync on its own (node2 was seen SyncSource with
    # nothing left out of sync just after node q's report): both must settle within 30 s.
    for i, ro in ((2, "Primary/Secondary"), (q, "Secondary/Primary")):
        cluster.wait_until(i, "cat /proc/drbd", lambda _, i=i, ro=ro: (lambda d: d["cs"] == "Connected" and
                           d["ds"] == "UpToDate/UpToDate" and d["ro"] == ro and not d["oos"])(proc_drbd(cluster, i)[minor]),
                           30, every=0.5, what=f"node{i} Connected {ro} UpToDate/UpToDate")
    pq = proc_drbd(cluster, q)[minor]
    # Fresh metadata on Q means a full sync; with rs-discard-granularity (issue 18) the zero runs of the
    # thin source travel as discards, so Q receives about what node2 has allocated, not the whole size.
    figures[f"KiB of data received by node{q} in the full sync (nr)"] = pq["nr"]
    for i in (2, q):
        pct = cluster.check(i, f"lvs --noheadings -o data_percent ssd/{res}").strip()
        figures[f"node{i}'s thin LV allocated after the sync, %"] = float(pct)
    link = raw_link_mib_s(cluster, 2, q)
    figures[f"raw link node2 -> node{q} (one TCP stream, 128 MiB, perl on both ends), MiB/s"] = link
    after = acked(acks_path)
    if after <= before + 10:
        raise LabError(f"the log writer on node2 stalled: {before} acknowledged at the kill, {after} now")
    figures["records acknowledged on node2 between the kill and the end of the sync"] = after - before
    tl.mark(f"two UpToDate replicas (node2, node{q}); the writer went on ({after - before} records meanwhile)")

    # Q holds the data: move the disk there and read it.
    stop_logger(cluster, 2)
    n_acked = acked(acks_path)
    cluster.check(2, f"umount /mnt/{VMID}", 60)
    pve(cluster, 2, "deactivate", vol)
    t = time.time()
    pve(cluster, q, "activate", vol)
    cluster.check(q, f"mkdir -p /mnt/{VMID} && mount {path} /mnt/{VMID}", 240)
    figures[f"deactivate on node2, activate + mount on node{q}, s"] = elapsed(t)
    got = cluster.check(q, f"cd /mnt/{VMID} && sha256sum f1 f2")
    if got != sums:
        raise LabError(f"checksums differ on node{q}:\n{sums}\n{got}")
    log = cluster.check(q, f"cat /mnt/{VMID}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged records missing or damaged on node{q}, first {missing[:5]}")
    figures["log records acknowledged (all present on the new node)"] = n_acked
    cluster.check(q, f"umount /mnt/{VMID}", 60)
    rc, out, err = cluster.run_full(q, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node{q} is not clean (rc {rc}):\n{out}\n{err}")
    tl.mark(f"node{q} has every acknowledged record and checksum; e2fsck clean")
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("node_replace", test, n=3, drbdpool=True))
