#!/usr/bin/env python3
"""The Controlled Failure Test: drbdpool + the Perl shim on real DRBD 8.4 and LVM thin, node 1 hard-killed.

Two guests, each with VG `ssd` / thin pool `data` on its virtio disk and `drbdpool agent` running; the
cluster store is the shared 9p directory /store. On node 1, three container disks are made the way Proxmox
does (alloc_image, activate_volume, path through PVE::Storage::Custom::DRBDPoolPlugin), each gets
`mkfs.ext4 -O mmp`, files with recorded sha256 sums, and disk 1 an append-only log written with an fsync
after every record (each acknowledged record is counted on the host, in /share, which survives the kill).
Node 1 is powered off (SIGKILL of its qemu) while the log is being written. On node 2 the disks are
activated through the shim, the file systems check clean, every checksum matches and every acknowledged
log record is there.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import LabError, Result, activate_retrying, alloc_ready, elapsed, main, minor_of, proc_drbd, pve  # noqa: E402

VMIDS = (101, 102, 103)
SIZE_KIB = 256 * 1024

# Appends fixed-size records to the log on disk 1; after each record's fsync returns, its number goes to
# /share/acks (the host's directory): what the writer was told is durable, counted outside node 1.
LOGGER = r"""#!/usr/bin/perl
use strict; use warnings; use IO::Handle;
my ($log, $acks) = @ARGV;
open(my $l, '>>', $log) or die "open $log: $!";
open(my $a, '>>', $acks) or die "open $acks: $!";
$a->autoflush(1);
for (my $n = 1; ; $n++) {
    my $rec = sprintf("record %08d %s\n", $n, 'x' x 40);
    syswrite($l, $rec) == length($rec) or die "write: $!";
    $l->sync or die "fsync: $!";
    print $a "$n\n";
}
"""


def record(n):
    return f"record {n:08d} {'x' * 40}"


def start_logger(cluster, i, log, at_least=50):
    """The log writer on guest i appending to `log` (a file on a drbdpool volume), its pid in
    /run/logger.pid. Returns the host's path of its acknowledgements (/share/acks) once `at_least` records
    are acknowledged; LabError after 60 s."""
    acks = os.path.join(cluster.share, "acks")
    if os.path.exists(acks):  # a run directory reused under the same LAB_RUN_NAME
        os.remove(acks)
    cluster.write_file(i, "/root/logger.pl", LOGGER, 0o755)
    cluster.check(i, f"setsid perl /root/logger.pl {log} /share/acks >/share/logger.err 2>&1 </dev/null & "
                     "echo $! >/run/logger.pid")
    deadline = time.time() + 60
    while acked(acks) < at_least:
        if time.time() > deadline:
            raise LabError(f"the log writer on node{i} acknowledged only {acked(acks)} records in 60 s; "
                           f"see {cluster.share}/logger.err")
        time.sleep(0.5)
    return acks


def stop_logger(cluster, i):
    """Stop guest i's log writer and wait until it is gone (10 s at most)."""
    cluster.check(i, "kill $(cat /run/logger.pid); for n in $(seq 50); do "
                     "kill -0 $(cat /run/logger.pid) 2>/dev/null || exit 0; sleep 0.2; done; exit 1", 30)


def test(cluster):
    figures = {"boot both guests (parallel), s": cluster.boot_seconds}
    tl = cluster.timeline
    figures["VG + thin pool + node add + agents up, s"] = cluster.setup_seconds
    tl.mark("both nodes registered, VG ssd / thin pool data ready, agents running")

    vols, sums = {}, {}
    for vmid in VMIDS:
        vol, call, ready = alloc_ready(cluster, 1, vmid, SIZE_KIB, timeout=120)
        figures[f"create {vol} (alloc_image through the shim), call / ready, s"] = f"{call:.1f} / {ready:.1f}"
        p1, p2 = proc_drbd(cluster, 1), proc_drbd(cluster, 2)
        path = pve(cluster, 1, "path", vol)["path"]
        minor = minor_of(path)
        if minor not in p1 or minor not in p2:
            raise LabError(f"{vol}: minor {minor} not configured on both nodes after alloc:\n{p1}\n{p2}")
        synced = p1[minor]["ns"] + p1[minor]["nr"] + p2[minor]["ns"] + p2[minor]["nr"]
        figures[f"KiB resynced at creation of {vol}"] = synced
        vols[vmid] = (vol, path)
        tl.mark(f"{vol} created in {ready:.1f}s (the call returned after {call:.1f}s) as {path}: {p1[minor]['cs']} "
                f"{p1[minor]['ds']}, {synced} KiB resynced")
    for vmid, (vol, path) in vols.items():
        t = time.time()
        r = pve(cluster, 1, "activate", vol)
        if r["path"] != path:
            raise LabError(f"{vol}: activate returned {r['path']}, path returned {path}")
        cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p /mnt/{vmid} && mount {path} /mnt/{vmid}", 120)
        sums[vmid] = cluster.check(1, f"cd /mnt/{vmid} && for n in 1 2; do dd if=/dev/urandom of=f$n bs=1M "
                                      "count=4 status=none || exit 1; done && sync && sha256sum f1 f2", 120)
        figures[f"activate + mkfs.ext4 -O mmp + mount + write 8 MiB {vol}, s"] = elapsed(t)
    tl.mark("3 disks Primary on node1, ext4 (MMP) mounted, files written and checksummed")

    acks_path = start_logger(cluster, 1, f"/mnt/{VMIDS[0]}/journal.log")
    tl.mark(f"append-only log running ({acked(acks_path)} records acknowledged so far)")

    tl.zero("node1 powered off (SIGKILL of its qemu) while the log is written")
    cluster.kill(1)
    n_acked = acked(acks_path)
    tl.mark(f"{n_acked} log records were acknowledged (fsync returned) before the power-off")
    cluster.wait_until(2, "cat /proc/drbd", lambda o: "cs:Connected" not in o, 60, every=0.2,
                       what="peer loss on every resource")
    figures["peer loss noticed by node2, s"] = tl.mark("node2 noticed the peer loss")

    for vmid, (vol, path) in vols.items():
        took, tries, last = activate_retrying(cluster, 2, vol)
        figures[f"activate {vol} on the survivor, s"] = took
        if tries > 1:
            figures[f"activate {vol}: refused first ({tries - 1}x), last refusal"] = last[-300:]
        tl.mark(f"{vol} activated on node2 (Primary) after {tries} attempt(s)")
    p2 = proc_drbd(cluster, 2)
    for vmid, (vol, path) in vols.items():
        d = p2[minor_of(path)]
        if not d["ro"].startswith("Primary") or not d["ds"].startswith("UpToDate"):
            raise LabError(f"{vol} on node2 is {d['ro']} {d['ds']} after activation")

    # Mount all three at once: each mount first waits out MMP (the dead node's MMP block is stale) and
    # replays the journal; the waits overlap.
    t = time.time()
    mounts = " ".join(f"(mkdir -p /mnt/{v} && mount {vols[v][1]} /mnt/{v}) &" for v in VMIDS)
    cluster.check(2, f"{mounts} wait; for v in {' '.join(map(str, VMIDS))}; do mountpoint -q /mnt/$v || "
                     "{ echo /mnt/$v not mounted >&2; exit 1; }; done", 240)
    figures["mount 3 file systems on node2 (MMP wait + journal replay, parallel), s"] = elapsed(t)
    tl.mark("3 file systems mounted on node2 (journal replayed)")

    for vmid in VMIDS:
        got = cluster.check(2, f"cd /mnt/{vmid} && sha256sum f1 f2")
        if got != sums[vmid]:
            raise LabError(f"vm {vmid}: checksums differ after failover:\n{sums[vmid]}\n{got}")
    tl.mark("every checksum equal on node2")

    log = cluster.check(2, f"cat /mnt/{VMIDS[0]}/journal.log", 120).split("\n")
    missing = [n for n in range(1, n_acked + 1) if n > len(log) or log[n - 1] != record(n)]
    if missing:
        raise LabError(f"{len(missing)} acknowledged log records missing or damaged, first: "
                       f"{missing[:5]} (acknowledged {n_acked}, log has {len(log)} lines)")
    extra = len([x for x in log if x]) - n_acked
    figures["log records acknowledged before the power-off"] = n_acked
    figures["log records present after failover (acknowledged + in flight)"] = n_acked + max(extra, 0)
    tl.mark(f"all {n_acked} acknowledged log records present ({max(extra, 0)} more were in flight)")

    t = time.time()
    cluster.check(2, "umount " + " ".join(f"/mnt/{v}" for v in VMIDS), 60)
    for vmid, (vol, path) in vols.items():
        rc, out, err = cluster.run_full(2, f"e2fsck -f -n {path}", 180)
        if rc != 0:
            raise LabError(f"{vol}: e2fsck -f -n on node2 is not clean (rc {rc}):\n{out}\n{err}")
    figures["umount + e2fsck -f -n of 3 file systems, s"] = elapsed(t)
    figures["failover: power-off to all disks verified, s"] = tl.mark(
        "all disks verified: fsck clean, checksums equal, no acknowledged write lost")
    return Result(figures)


def acked(path):
    """Number of the last complete acknowledgement line."""
    try:
        with open(path) as fh:
            lines = fh.read().split("\n")
    except FileNotFoundError:
        return 0
    full = [x for x in lines[:-1] if x.strip().isdigit()]
    return int(full[-1]) if full else 0


if __name__ == "__main__":
    sys.exit(main("demo", test, drbdpool=True))
