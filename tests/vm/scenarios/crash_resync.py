#!/usr/bin/env python3
"""What killing nodes showed (issue 18), on the real kernel: two DRBD 8.4 nodes, through the shim.

1. The peer dies inside an alloc. alloc is held for 3 s at `alloc.after-peers-ready` (a failpoint that
   pauses), right where both sides are Connected and still Inconsistent; node 2 is hard-killed there. The
   initial-sync skip then goes to a dead peer, and node 1's kernel shows that peer Connected and UpToDate
   (DRBD 8.4 marks it so when it sends the skip) until its ping times out. alloc must not believe it: it
   must fail within its budget, with a message that names node2, never mark the volume ready, and a
   second alloc of the same name must say the first is being removed. When node 2 is back its agent
   finishes the roll-back and nothing is left on either node (document, LV, resource file, DRBD device).
   The kernel's fake UpToDate must have been seen, or the run did not test the window: then it is tried
   again with a new volume (DRBD's ping can fall inside the 3 s).
2. A thin replica resynced in full stays thin. 64 MiB written on node 1 of a 512 MiB volume, then node 2's
   replica is invalidated (a full resync, what a replica that missed the skip or a rebuilt one gets). With
   the rendered `rs-discard-granularity` node 2's thin LV ends about as full as node 1's. The control run
   sets the option to 0 on node 2 at runtime (what drbdpool rendered before issue 18) and invalidates
   again: node 2 must then end fully allocated, which shows the check can fail.
3. A crashed Primary resyncs its activity log, not the volume. Node 1 writes to every 4 MiB extent of a
   1 GiB volume (a guest that has written everywhere), then a last burst of 8 MiB, and is hard-killed.
   When it comes back DRBD resyncs the extents in its activity log (node 1 is the crashed Primary, the
   SyncSource): at most al-extents x 4 MiB as rendered for 1 GiB (67 extents), where DRBD's default of
   1237 extents would hold all 256 touched ones, the whole volume (the issue's 516 MB of 516 MB). The
   control run sets al-extents 1237 on node 1's kernel at runtime, crashes it the same way, and must
   resync (nearly) the whole volume, which shows the bound can fail.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import (DRBDSETUP84, ENV, LabError, Result, drbdsetup_show, elapsed, main, minor_of, proc_drbd, pve,  # noqa: E402
                pve_try, voldoc)

# drbd/render.rs: al_extents(size) = clamp(ceil(size / 4 MiB) / 8, 67, 1237), 4 MiB per extent
AL_EXTENT_KIB = 4096
AL_EXTENTS_MIN = 67
ALLOC_LIMIT_S = 45          # the shim gives the helper 55 s and PVE's storage lock 60 s: a margin of 10 s
PAUSE_MS = 3000
SIZE_KIB_AL = 1024 * 1024   # part 3's volume: 256 extents
BURST_KIB = 8 * 1024


def al_extents(size_kib):
    return min(max(-(-size_kib // AL_EXTENT_KIB) // 8, AL_EXTENTS_MIN), 1237)


def lv_percent(cluster, i, res):
    return float(cluster.check(i, f"lvs --noheadings -o data_percent ssd/{res}").strip())


def leftovers(cluster, i, res):
    """What node i still has of resource res: LV, resource file, DRBD device."""
    out = cluster.check(i, f"lvs --noheadings -o lv_name ssd 2>/dev/null | grep -w {res} || true; "
                           f"grep -rl {res} /etc/drbd.d 2>/dev/null || true; "
                           f"{DRBDSETUP84} show {res} >/dev/null 2>&1 && echo drbd-device {res} || true")
    return out.split()


def alloc_peer_dies(cluster, vmid, figures):
    """Part 1, one try. Returns True when the window was hit (node1's kernel showed the dead peer
    UpToDate), False when DRBD noticed the death before the skip (then nothing was proven)."""
    tl = cluster.timeline
    name = f"vm-{vmid}-disk-0"
    # The alloc in the background on node 1 (the control channel runs one command at a time), with its
    # exit code and start/end times in /tmp/alloc-<vmid>.rc. DRBDPOOL_CREATE_INLINE=1: the creation in
    # the call, so its error reaches the caller; `finish-create` runs the same steps after the call
    # (protocol/finish.rs) and rolls back the same way.
    out = f"/tmp/alloc-{vmid}"
    now = '$(perl -MTime::HiRes=time -e "printf q(%.3f), time")'   # busybox date has no %N
    cluster.check(1, ENV + f"DRBDPOOL_CREATE_INLINE=1 DRBDPOOL_FAILPOINTS=alloc.after-peers-ready=pause:{PAUSE_MS} setsid sh -c "
                           f"'t0={now}; perl -T /root/pve.pl alloc {vmid} 262144 {name} >{out}.out 2>{out}.err; "
                           f"echo $? $t0 {now} >{out}.rc.tmp; mv {out}.rc.tmp {out}.rc' "
                           "</dev/null >/dev/null 2>&1 &")
    t = time.time()
    # Connected with both disks still Inconsistent: alloc is in its pause, before the skip.
    while True:
        doc = None
        try:
            doc = voldoc(cluster, name)
        except (OSError, ValueError):
            pass
        if doc:
            m = proc_drbd(cluster, 1).get(doc["minor"])
            if m and m["cs"] == "Connected" and m["ds"] == "Inconsistent/Inconsistent":
                break
        if elapsed(t) > 30:
            raise LabError(f"{name}: node1 never showed the new resource Connected and Inconsistent/Inconsistent "
                           f"within 30 s of the alloc; /proc/drbd:\n{cluster.check(1, 'cat /proc/drbd')}")
        time.sleep(0.2)
    res = doc["resource"]
    cluster.kill(2)
    t_kill = time.time()
    tl.mark(f"{name} ({res}): Connected, Inconsistent/Inconsistent at +{t_kill - t:.1f} s; node2 hard-killed")
    # After the pause the skip goes out to the dead peer. Watch node 1's kernel until alloc returns.
    faked = None
    while cluster.run(1, f"test -e {out}.rc")[0] != 0:
        v = proc_drbd(cluster, 1).get(doc["minor"])
        if v:
            if v["cs"] == "Connected" and v["ds"] == "UpToDate/UpToDate" and faked is None:
                faked = time.time() - t_kill
                tl.mark(f"node1's kernel shows the dead node2 Connected and UpToDate ({faked:.1f} s after the kill)")
        if elapsed(t) > 120:
            raise LabError(f"{name}: alloc did not return within 120 s")
        time.sleep(0.3)
    rc, t0, t1 = cluster.check(1, f"cat {out}.rc").split()
    secs = float(t1) - float(t0)
    err = cluster.check(1, f"cat {out}.err")
    tl.mark(f"alloc returned {rc} after {secs:.1f} s")
    if rc == "0":
        raise LabError(f"{name}: alloc returned success although node2 died before the initial-sync skip "
                       f"(node1's kernel showed it UpToDate: {faked is not None}); stdout: "
                       f"{cluster.check(1, f'cat {out}.out')}")
    if faked is None:
        tl.mark("node1 saw node2 gone before the skip (DRBD's ping fell inside the pause): window missed")
        # finish this try before the next one: node 2 back, roll-back done
        cleanup_after_death(cluster, name, res, figures=None)
        return False
    figures["failed alloc (peer died before the skip): call -> error, s"] = secs
    figures["node1's kernel showed the dead peer UpToDate, s after the kill"] = faked
    if secs > ALLOC_LIMIT_S:
        raise LabError(f"the failed alloc took {secs:.1f} s, over {ALLOC_LIMIT_S} s (the shim's limit is 55 s, "
                       f"PVE's storage lock 60 s)")
    final = next((l for l in reversed(err.splitlines()) if "was not created" in l), None)
    if final is None:
        raise LabError(f"the failed alloc's error does not say the volume was not created:\n{err}")
    if "node2" not in final or "UpToDate" not in final:
        raise LabError(f"the failed alloc's error does not name node2 and its missing UpToDate report: {final}")
    tl.mark("alloc's error: " + final[:400])
    try:
        state = voldoc(cluster, name)["state"]
    except OSError:
        state = "gone"
    if state == "ready":
        raise LabError(f"{name} is `ready` in the store after the failed alloc")
    # The same name again while the roll-back waits for node 2.
    ok, msg = pve_try(cluster, 1, "alloc", vmid, 262144, name)
    if ok:
        raise LabError(f"a second alloc of {name} succeeded while node2 is down and the first is being removed")
    if "being removed" not in msg:
        raise LabError(f"a second alloc of {name} does not say the first is being removed: {msg}")
    tl.mark("second alloc of the same name: " + msg.split(": ", 2)[-1][:300])
    cleanup_after_death(cluster, name, res, figures)
    return True


def cleanup_after_death(cluster, name, res, figures):
    """Node 2 back with its agent: the roll-back completes, nothing is left on either node."""
    t = time.time()
    cluster.restart(2)
    cluster.start_agent(2)
    deadline = time.time() + 180
    while True:
        left = {i: leftovers(cluster, i, res) for i in (1, 2)}
        try:
            voldoc(cluster, name)
            left["store"] = [f"volumes/dp/{name}.json"]
        except OSError:
            pass
        if not any(left.values()):
            break
        if time.time() > deadline:
            raise LabError(f"{name}: left behind 180 s after node2 came back: {left}")
        time.sleep(2)
    if figures is not None:
        figures["node2 back -> roll-back complete, nothing left on either node, s"] = elapsed(t)
    cluster.timeline.mark(f"node2 back: {name} rolled back, no document, LV, resource file or device left")


def thin_stays_thin(cluster, figures, findings):
    tl = cluster.timeline
    size_kib = 512 * 1024
    vol = pve(cluster, 1, "alloc", 311, size_kib)["volname"]
    path = pve(cluster, 1, "activate", vol)["path"]
    res, minor = voldoc(cluster, vol)["resource"], minor_of(path)
    cluster.check(1, f"dd if=/dev/urandom of={path} bs=1M count=64 oflag=direct status=none", 120)
    base = {i: lv_percent(cluster, i, res) for i in (1, 2)}
    tl.mark(f"{vol}: 64 MiB written on node1; thin LV data% node1 {base[1]}, node2 {base[2]}")

    def full_resync(label):
        t = time.time()
        cluster.check(2, f"drbdadm invalidate {res}", 60)
        cluster.wait_until(2, "cat /proc/drbd",
                           lambda o: re.search(rf"^\s*{minor}: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate",
                                               o, re.M), 300, every=1, what=f"node2 UpToDate after the {label} resync")
        secs = elapsed(t)
        pct = lv_percent(cluster, 2, res)
        figures[f"full resync of 512 MiB ({label}), s"] = secs
        figures[f"node2 thin LV after the {label} full resync, data %"] = pct
        tl.mark(f"{label}: full resync in {secs:.1f} s ({size_kib / 1024 / secs:.0f} MiB/s); node2 data% {pct}")
        return pct

    show = drbdsetup_show(cluster, 2, res)
    if "rs-discard-granularity" not in show:
        raise LabError(f"node2's kernel runs {res} without rs-discard-granularity:\n{show}")
    pct = full_resync("rendered")
    # As allocated as node 1 (the 64 MiB), a little more for DRBD's metadata: far from full.
    if pct > base[1] + 5:
        findings.append(f"a full resync of a thin replica allocated it: node2 {pct} % against node1's {base[1]} %")
    cluster.check(2, f"{DRBDSETUP84} disk-options {minor} --rs-discard-granularity=0")
    pct0 = full_resync("control, rs-discard-granularity 0")
    if pct0 < 95:
        raise LabError(f"the control run (rs-discard-granularity 0) left node2's LV at {pct0} %: the check above "
                       "could not have failed")
    pve(cluster, 1, "deactivate", vol)
    pve(cluster, 1, "free", vol)


def crash_primary(cluster, vol, res, minor, path, label, figures):
    """Node 1 (Primary) writes one block in every extent, then the last burst, and is hard-killed; it
    comes back with its agent. Returns the KiB DRBD resynced (node1's "will sync")."""
    tl = cluster.timeline
    extents = SIZE_KIB_AL // AL_EXTENT_KIB
    cluster.check(1, f"i=0; while [ $i -lt {extents} ]; do dd if=/dev/urandom of={path} bs=4k count=1 "
                     f"seek=$((i * 1024)) oflag=direct status=none || exit 1; i=$((i + 1)); done", 300)
    t = time.time()
    cluster.check(1, f"dd if=/dev/urandom of={path} bs=64k count={BURST_KIB // 64} seek=1600 oflag=direct conv=fsync "
                     "status=none", 120)
    burst_s = elapsed(t)
    cluster.kill(1)
    tl.mark(f"{label}: node1 wrote a block in each of the {extents} extents, then {BURST_KIB} KiB in {burst_s:.1f} s; "
            "node1 (Primary) hard-killed")
    t = time.time()
    cluster.restart(1)
    cluster.start_agent(1)
    cluster.wait_until(1, "cat /proc/drbd",
                       lambda o: re.search(rf"^\s*{minor}: cs:Connected ro:Secondary/Secondary ds:UpToDate/UpToDate",
                                           o, re.M), 300, every=1, what="node1 back, connected, UpToDate")
    figures[f"crashed Primary ({label}): boot + agent + resync until UpToDate, s"] = elapsed(t)
    m = re.findall(r"Began resync as (SyncSource|SyncTarget) \(will sync (\d+) KB", cluster.check(1, "dmesg"))
    resynced = int(m[-1][1]) if m else 0
    figures[f"KiB resynced after the crashed Primary came back ({label})"] = resynced
    tl.mark(f"{label}: {resynced} KiB resynced ({m[-1][0] if m else 'no resync'}) of a {SIZE_KIB_AL} KiB volume")
    return resynced


def crashed_primary_resyncs_its_log(cluster, figures):
    vol = pve(cluster, 1, "alloc", 321, SIZE_KIB_AL)["volname"]
    path = pve(cluster, 1, "activate", vol)["path"]
    res, minor = voldoc(cluster, vol)["resource"], minor_of(path)
    al = al_extents(SIZE_KIB_AL)
    show = drbdsetup_show(cluster, 1, res)
    if not re.search(rf"al-extents\s+{al}\s*;", show):
        raise LabError(f"node1's kernel does not run {res} with al-extents {al}:\n{show}")
    figures["KiB written in the last seconds before the crash"] = BURST_KIB
    figures[f"KiB the activity log can hold (al-extents {al} x 4 MiB)"] = al * AL_EXTENT_KIB
    figures["KiB of the volume (each of its extents written)"] = SIZE_KIB_AL
    resynced = crash_primary(cluster, vol, res, minor, path, "rendered", figures)
    if resynced < BURST_KIB:
        raise LabError(f"only {resynced} KiB resynced after the crash, less than the {BURST_KIB} KiB of the last "
                       "burst, which the activity log must hold")
    if resynced > al * AL_EXTENT_KIB:
        raise LabError(f"{resynced} KiB resynced after the crash: more than the activity log of {al} extents "
                       f"({al * AL_EXTENT_KIB} KiB) of the {SIZE_KIB_AL} KiB volume")
    # Control: DRBD's default activity log (what drbdpool rendered before issue 18), set on node 1's
    # kernel at runtime. drbdmeta's apply-al (before the attach) marks every extent the log held.
    path = pve(cluster, 1, "activate", vol)["path"]
    cluster.check(1, f"{DRBDSETUP84} disk-options {minor} --al-extents=1237")
    full = crash_primary(cluster, vol, res, minor, path, "control, al-extents 1237", figures)
    if full < SIZE_KIB_AL * 9 // 10:
        raise LabError(f"the control run (al-extents 1237) resynced {full} KiB of {SIZE_KIB_AL}: the bound above "
                       "could not have failed")
    pve(cluster, 1, "free", vol)


def test(cluster):
    figures, findings = {}, []
    tries = 0
    for vmid in (301, 302, 303):
        tries += 1
        if alloc_peer_dies(cluster, vmid, figures):
            break
    else:
        raise LabError("DRBD noticed node2's death before the skip in 3 tries: the window was never tested")
    figures["tries until the kill fell before the skip"] = tries
    thin_stays_thin(cluster, figures, findings)
    crashed_primary_resyncs_its_log(cluster, figures)
    return Result(figures, findings)


if __name__ == "__main__":
    sys.exit(main("crash_resync", test, drbdpool=True))
