#!/usr/bin/env python3
"""Raw DRBD 8.4 failover on LVM thin, no drbdpool involved: proves the lab and the kernel parts.

Two guests; on each a thin pool and a thin LV on its virtio disk; one DRBD resource (protocol C) on top.
The initial sync is skipped with `new-current-uuid --clear-bitmap` (the LV is thin: both sides read zeros),
and /proc/drbd must show that nothing was resynced. Guest 1 is Primary, carries an ext4 with MMP and files
with recorded sha256 sums; it is hard-killed (SIGKILL of its qemu); guest 2 notices, is promoted, its file
system checks clean and every checksum is equal.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cluster import Result, main  # noqa: E402
from lab import LabError  # noqa: E402

LV_MIB = 256
RES = """resource r0 {
    net {
        protocol C;
        ping-int 3;          # notice a dead peer within seconds (default 10)
        connect-int 2;
        after-sb-0pri discard-zero-changes;
        after-sb-1pri discard-secondary;
    }
    on node1 { device /dev/drbd0 minor 0; disk /dev/vg0/r0; meta-disk internal; address ipv4 10.99.0.1:7789; }
    on node2 { device /dev/drbd0 minor 0; disk /dev/vg0/r0; meta-disk internal; address ipv4 10.99.0.2:7789; }
}
"""
# No usage-count: the guests must never try to reach anything outside the lab network.
GLOBAL = "global { usage-count no; }\ncommon { }\n"


def proc_drbd(cluster, i):
    out = cluster.check(i, "cat /proc/drbd")
    m = re.search(r"cs:(\S+) ro:(\S+) ds:(\S+).*?\n\s*ns:(\d+) nr:(\d+) dw:(\d+) dr:(\d+).*?oos:(\d+)", out, re.S)
    if not m:
        raise LabError(f"node{i}: cannot parse /proc/drbd:\n{out}")
    keys = ("cs", "ro", "ds", "ns", "nr", "dw", "dr", "oos")
    d = dict(zip(keys, m.groups()))
    for k in keys[3:]:
        d[k] = int(d[k])
    d["text"] = out
    return d


def test(cluster):
    figures = {"boot both guests (parallel)": cluster.boot_seconds}
    tl = cluster.timeline
    t = time.time()
    cluster.par(lambda i: cluster.check(i, f"""
            pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda &&
            lvcreate -q -L 1G -T vg0/data && lvcreate -q -V {LV_MIB}M -T vg0/data -n r0 &&
            test -b /dev/vg0/r0""", 120))
    figures["pvcreate + vgcreate + thin pool + thin LV"] = time.time() - t
    tl.mark("thin pool vg0/data and thin LV vg0/r0 on both guests")

    t = time.time()
    for i in (1, 2):
        cluster.write_file(i, "/etc/drbd.d/global_common.conf", GLOBAL)
        cluster.write_file(i, "/etc/drbd.d/r0.res", RES)
    cluster.par(lambda i: cluster.check(i, "drbdadm create-md --force r0 && drbdadm up r0", 60))
    for i in (1, 2):
        cluster.wait_until(i, "drbdadm cstate r0", lambda o: o.strip() == "Connected", 60, what="Connected")
    figures["create-md + up + Connected (both)"] = time.time() - t
    tl.mark("r0 Connected, both Inconsistent")

    t = time.time()
    cluster.check(1, "drbdadm -- --clear-bitmap new-current-uuid r0")
    for i in (1, 2):
        cluster.wait_until(i, "drbdadm dstate r0", lambda o: o.strip() == "UpToDate/UpToDate", 30,
                           what="UpToDate/UpToDate")
    figures["skip initial sync (new-current-uuid --clear-bitmap)"] = time.time() - t
    time.sleep(2)   # a resync, if one had started, would show up in the counters by now
    p1, p2 = proc_drbd(cluster, 1), proc_drbd(cluster, 2)
    resynced = p1["ns"] + p2["nr"] + p2["ns"] + p1["nr"]
    if resynced or p1["oos"] or p2["oos"] or "sync" in (p1["cs"] + p2["cs"]).lower():
        raise LabError(f"initial sync was not skipped:\n{p1['text']}\n{p2['text']}")
    figures["KiB resynced at creation"] = resynced
    tl.mark(f"initial sync skipped: ns/nr 0 KiB on both, oos 0 ({p1['cs']} {p1['ds']})")

    t = time.time()
    cluster.check(1, "drbdadm primary r0 && mkfs.ext4 -q -F -O mmp /dev/drbd0 && mkdir -p /mnt/r0 && "
                     "mount /dev/drbd0 /mnt/r0", 120)
    sums = cluster.check(1, "cd /mnt/r0 && for n in 1 2 3 4; do dd if=/dev/urandom of=f$n bs=1M count=4 "
                            "status=none || exit 1; done && sync && sha256sum f1 f2 f3 f4", 120)
    figures["primary + mkfs.ext4 -O mmp + write 16 MiB + sync"] = time.time() - t
    if len(sums.splitlines()) != 4:
        raise LabError(f"expected 4 checksums, got:\n{sums}")
    p1 = proc_drbd(cluster, 1)
    tl.mark(f"node1 Primary, ext4 (MMP) with 4 files written, {p1['ns']} KiB replicated")

    tl.zero("node1 powered off (SIGKILL of its qemu)")
    cluster.kill(1)
    cluster.wait_until(2, "cat /proc/drbd", lambda o: "cs:Connected" not in o, 60, every=0.2,
                       what="peer loss")
    figures["peer loss noticed after the kill"] = tl.mark("node2 noticed the peer loss: " +
                                                          proc_drbd(cluster, 2)["cs"])
    t = time.time()
    cluster.check(2, "drbdadm primary r0")
    figures["promote survivor"] = time.time() - t
    tl.mark("node2 Primary")
    mmp = cluster.check(2, "dumpe2fs -h /dev/drbd0 2>/dev/null | grep -i 'mmp update interval'").strip()
    tl.mark(f"node2 sees {mmp or 'no MMP fields?'}")
    t = time.time()
    # Mounting replays the journal the crash left behind. MMP makes the kernel first wait about twice
    # the MMP check interval to be sure no other node still writes (node1's MMP block is stale):
    # that wait is the price of the multi-mount protection, measured here.
    got = cluster.check(2, "mkdir -p /mnt/r0 && mount /dev/drbd0 /mnt/r0 && cd /mnt/r0 && "
                           "sha256sum f1 f2 f3 f4", 180)
    figures["mount (MMP wait + journal replay) + checksums"] = time.time() - t
    if got != sums:
        raise LabError(f"checksums differ after failover:\nbefore:\n{sums}\nafter:\n{got}")
    tl.mark("mounted on node2, all 4 checksums equal")
    t = time.time()
    cluster.check(2, "umount /mnt/r0")
    rc, out = cluster.run(2, "e2fsck -f -n /dev/drbd0", 180)
    figures["umount + fsck -f -n"] = time.time() - t
    if rc != 0:
        raise LabError(f"fsck -n on the survivor is not clean (rc {rc}):\n{out}\n{cluster.last_err}")
    tl.mark("fsck -f -n clean on node2")
    figures["failover total (kill to verified)"] = tl.now()
    return Result(figures)


def report(name, result, seconds):
    """raw_drbd's own layout of its figures."""
    figures = result.figures
    figures["whole scenario"] = seconds
    print(f"\n{name} figures (seconds unless noted):")
    for k, v in figures.items():
        print(f"  {k:<55} {v:8.1f}" if isinstance(v, float) else f"  {k:<55} {v:8}")


if __name__ == "__main__":
    sys.exit(main("raw_drbd", test, report=report, n=2))
