#!/usr/bin/env python3
"""Resize a replicated volume through the shim, then a hard-killed Primary comes back and only resyncs.

1. A volume made through the shim on node 1 (Primary, ext4 with MMP, a file with its checksum) is grown
   through volume_resize (running=1, as `pct resize` does): the thin LV grows on both nodes and DRBD's
   device on both; the file system is grown online and filled into the new space.
2. Node 1 (Primary) is hard-killed; node 2 activates the volume through the shim and writes more data.
3. Node 1 boots again and its agent starts: it reconnects as SyncTarget, resyncs only what changed (the
   data node 2 wrote, plus node 1's activity log), ends Secondary and UpToDate, and no split brain is
   detected on either side. The volume is then moved back to node 1 (deactivate on 2, activate on 1) and
   every checksum is checked there: the resync brought the right data.
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import LabError, Result, activate_retrying, elapsed, main, minor_of, proc_drbd, pve  # noqa: E402

VMID = 201
SIZE_KIB = 256 * 1024
NEW_BYTES = 384 * 1024 * 1024
CHANGED_MIB = 16


def voldoc(cluster, vol):
    p = os.path.join(cluster.store, "priv", "drbdpool", "volumes", "dp", f"{vol}.json")
    with open(p) as fh:
        return json.load(fh)


def test(cluster):
    figures, findings = {}, []
    tl = cluster.timeline
    vol = pve(cluster, 1, "alloc", VMID, SIZE_KIB)["volname"]
    path = pve(cluster, 1, "activate", vol)["path"]
    minor = minor_of(path)
    mnt = f"/mnt/{VMID}"
    cluster.check(1, f"mkfs.ext4 -q -F -O mmp {path} && mkdir -p {mnt} && mount {path} {mnt}", 120)
    sums = cluster.check(1, f"cd {mnt} && dd if=/dev/urandom of=a bs=1M count=8 status=none && sync && "
                            "sha256sum a", 120)
    tl.mark(f"{vol} ({path}) Primary on node1 with ext4 (MMP) and file a")

    # ---- 1. resize through the shim
    t = time.time()
    pve(cluster, 1, "resize", vol, NEW_BYTES, 1, )
    figures["volume_resize 256 -> 384 MiB through the shim, s"] = elapsed(t)
    doc = voldoc(cluster, vol)
    res = doc["resource"]
    if doc["size_kib"] != NEW_BYTES // 1024:
        raise LabError(f"store has size_kib {doc['size_kib']} after resize, want {NEW_BYTES // 1024}")
    for i in (1, 2):
        # the backing LV carries DRBD's internal metadata too: at least the new size
        lv = int(cluster.check(i, f"lvs --noheadings --units b --nosuffix -o lv_size ssd/{res}").strip())
        if lv < NEW_BYTES:
            raise LabError(f"node{i}: LV ssd/{res} is {lv} bytes after resize, want >= {NEW_BYTES}")
    # DRBD grows once every replica's backing has grown (the agent of replicas[0] or the handler).
    # The device is the whole LV minus DRBD's metadata: LVM rounds LVs up to whole extents (4 MiB),
    # so it may be a little larger than asked, never smaller, and the same on both nodes.
    dev = {}
    for i in (1, 2):
        dev[i] = int(cluster.wait_until(i, f"cat /sys/block/drbd{minor}/size",
                                        lambda o: int(o.strip() or 0) * 512 >= NEW_BYTES, 120, every=1,
                                        what=f"/dev/drbd{minor} to be >= {NEW_BYTES} bytes").strip()) * 512
    if dev[1] != dev[2]:
        raise LabError(f"/dev/drbd{minor} differs in size after the resize: {dev}")
    figures["DRBD device size after resize, bytes (asked 384 MiB)"] = dev[1]
    size = pve(cluster, 1, "size", vol)["size"]
    if size != NEW_BYTES:
        raise LabError(f"volume_size_info says {size}, want {NEW_BYTES}")
    figures["resize: until DRBD is 384 MiB on both nodes, s"] = elapsed(t)
    p = proc_drbd(cluster, 1)[minor]
    if "Sync" in p["cs"] or p["oos"]:
        # The grown area of a thin LV reads zeroes on both nodes: `drbdadm -- --assume-clean resize`
        # would skip this. Recorded as a finding (the scenario fails at the end), then waited out so
        # the rest still runs.
        findings.append(f"growing the thin volume resynced the new area ({p['oos']} KiB out of sync "
                        f"right after the resize, {p['cs']}): resize without --assume-clean")
        tl.mark(f"FINDING: the resize started a resync of {p['oos']} KiB; waiting for it")
        cluster.wait_until(1, "cat /proc/drbd", lambda o: f"{minor}: cs:Connected" in o and
                           "ds:UpToDate/UpToDate" in o, 300, every=1, what="the resize resync to finish")
        figures["resync of the grown area (should be none), s"] = elapsed(t)
    tl.mark(f"grown: LV ssd/{res} and /dev/drbd{minor} >= 384 MiB on both nodes ({p['cs']})")
    cluster.check(1, f"resize2fs {path} >/dev/null 2>&1 && cd {mnt} && "
                     "dd if=/dev/urandom of=b bs=1M count=32 status=none && sync", 300)
    sums += cluster.check(1, f"cd {mnt} && sha256sum b")
    tl.mark("ext4 grown online, 32 MiB file b written")

    # ---- 2. the Primary dies, node 2 takes over and writes
    tl.zero("node1 (Primary) powered off")
    cluster.kill(1)
    secs, tries, last = activate_retrying(cluster, 2, vol)
    figures["activate on node2 after the kill, s"] = tl.mark(f"node2 Primary after {tries} attempt(s)")
    if tries > 1:
        figures["  (refused before that with)"] = last[-200:]
    cluster.check(2, f"mkdir -p {mnt} && mount {path} {mnt}", 240)
    tl.mark("mounted on node2 (MMP wait + journal replay)")
    got = cluster.check(2, f"cd {mnt} && sha256sum a b")
    if got != sums:
        raise LabError(f"checksums differ on node2:\n{sums}\n{got}")
    cluster.check(2, f"cd {mnt} && dd if=/dev/urandom of=c bs=1M count={CHANGED_MIB} status=none && sync", 120)
    sums += cluster.check(2, f"cd {mnt} && sha256sum c")
    ns_before = proc_drbd(cluster, 2)[minor]["ns"]
    tl.mark(f"node2 wrote {CHANGED_MIB} MiB more while node1 is down")

    # ---- 3. node 1 comes back
    t = time.time()
    cluster.restart(1)
    tl.mark("node1 booted again")
    cluster.start_agent(1)
    cluster.wait_until(2, "cat /proc/drbd",
                       lambda o: f"{minor}: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate" in o, 300,
                       every=1, what="node1 back as Secondary UpToDate")
    figures["node1 boot + agent + rejoin + resync until UpToDate, s"] = elapsed(t)
    tl.mark("node1 Connected, Secondary, UpToDate")
    p1, p2 = proc_drbd(cluster, 1)[minor], proc_drbd(cluster, 2)[minor]
    if not p1["ro"].startswith("Secondary"):
        raise LabError(f"node1 came back as {p1['ro']}, want Secondary")
    dmesg1 = cluster.check(1, "dmesg")
    dmesg2 = cluster.check(2, "dmesg")
    for n, d in ((1, dmesg1), (2, dmesg2)):
        if re.search(r"split-brain", d, re.I):
            raise LabError(f"node{n} logged a split brain:\n" +
                           "\n".join(x for x in d.splitlines() if "plit" in x))
    # What DRBD resyncs after a crashed Primary comes back: the blocks the survivor changed while it
    # was away (the survivor's bitmap, "peer ... bits:" on node1) plus every extent in the crashed
    # node's activity log (its own bitmap, "self ... bits:"), which may have been written without
    # reaching the peer. 1 bit = 4 KiB. Anything else would be a full sync.
    hs = re.findall(r"self \S+ bits:(\d+).*\n.*peer \S+ bits:(\d+)", dmesg1)
    if not hs:
        raise LabError("node1's kernel log has no sync handshake for the rejoin:\n" + dmesg1[-3000:])
    self_kib, peer_kib = int(hs[-1][0]) * 4, int(hs[-1][1]) * 4
    m = re.search(r"Began resync as SyncTarget \(will sync (\d+) KB", dmesg1)
    resync_kib = int(m.group(1)) if m else 0
    sent = p2["ns"] - ns_before
    figures["KiB changed on node2 while node1 was down (node2's bitmap)"] = peer_kib
    figures["KiB in node1's activity log at the crash (node1's bitmap)"] = self_kib
    figures["KiB resynced (node1 'will sync')"] = resync_kib
    figures["KiB node2 sent for the rejoin (/proc/drbd ns)"] = sent
    vol_kib = dev[1] // 1024
    # Besides the 16 MiB written, mounting on node2 replayed node1's ext4 journal (up to the journal's
    # 16 MiB) and the new writes' metadata went through the journal again: allow that much, which is
    # still far from the whole volume. (Seen: 24028 KiB in one run, 36636 KiB in a busier one.)
    if not CHANGED_MIB * 1024 <= peer_kib <= CHANGED_MIB * 1024 + 48 * 1024:
        raise LabError(f"node2's bitmap holds {peer_kib} KiB but {CHANGED_MIB} MiB changed there")
    if resync_kib > self_kib + peer_kib or resync_kib >= vol_kib or sent > resync_kib + 4096:
        raise LabError(f"the rejoin resynced {resync_kib} KiB (sent {sent}) of a {vol_kib} KiB volume; "
                       f"the bitmaps hold {self_kib} + {peer_kib} KiB: not a partial resync")
    tl.mark(f"partial resync: {resync_kib} KiB of {vol_kib} = {peer_kib} changed on node2 + "
            f"{self_kib} in node1's activity log; no split brain on either node")

    # ---- the resynced data is right: move the volume back to node 1 and check everything there
    t = time.time()
    cluster.check(2, f"umount {mnt}")
    pve(cluster, 2, "deactivate", vol)
    secs, tries, last = activate_retrying(cluster, 1, vol)
    cluster.check(1, f"mkdir -p {mnt} && mount {path} {mnt}", 240)
    got = cluster.check(1, f"cd {mnt} && sha256sum a b c")
    if got != sums:
        raise LabError(f"checksums differ on node1 after the resync:\n{sums}\n{got}")
    cluster.check(1, f"umount {mnt}")
    rc, out, err = cluster.run_full(1, f"e2fsck -f -n {path}", 180)
    if rc != 0:
        raise LabError(f"e2fsck -f -n on node1 after the resync is not clean (rc {rc}):\n{out}\n{err}")
    figures["move back to node1 + mount + checksums + fsck, s"] = elapsed(t)
    tl.mark("moved back to node1: checksums of a, b, c equal, fsck clean")
    return Result(figures, findings)


if __name__ == "__main__":
    sys.exit(main("resize_rejoin", test, drbdpool=True))
