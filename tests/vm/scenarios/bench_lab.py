#!/usr/bin/env python3
"""Lab benchmark (issue 8): drbdpool against the floor of the same raw commands, side by side in ONE run.

Not a test and not in run.sh's default list (benchmarks must not slow CI down): scripts/bench-lab.sh runs it.
Two guests, VG `ssd` with a 12 GiB thin pool `data` on a sparse 16 GiB disk each, agents running.

a) creation of a replicated 10 GiB thin volume, BENCH_ROUNDS times (default 3), alternating:
   - ours: `alloc_image` through the real Perl shim on node 1 (perl -T /root/pve.pl alloc, as dp.py/demo.py),
     timed on the host around the call;
   - floor: the same work by hand, as fast as a person with a script can do it: lvcreate -V 10G thin on both
     nodes (in parallel), the .res written on both, create-md + up on both (in parallel), wait Connected,
     `new-current-uuid --clear-bitmap` (the initial-sync skip drbdpool does), wait UpToDate/UpToDate on both;
   - bytes resynced at creation (ns+nr on both nodes, /proc/drbd) for both.
c) write throughput (dd bs=1M oflag=direct) and latency (dd bs=4k oflag=direct,dsync) on node 1 of one
   drbdpool volume (Primary, Connected, protocol C) against a raw thin LV of the same size in the same pool
   (fresh too, so thin allocation costs both the same) and the hand-made DRBD resource of round 1.
b) node 1's qemu is SIGKILLed; on node 2: every volume is activated through the shim, retried every 0.5 s
   while refused; per volume: time from the kill, refusals, the successful call's duration, and call ->
   writable device (a 4 KiB O_DIRECT write succeeds). Floor: `drbdadm primary` + the same write on the
   hand-made resource.

Output: a table on stdout and one JSON object per figure (lines starting with `BENCH `), and
`bench_lab: PASS` at the end (it ran to completion; targets are judged from the table). Environment: BENCH_ROUNDS (3), BENCH_MB (throughput MiB, 64),
BENCH_LAT_N (4 KiB dsync writes, 200), LAB_AGENT_INTERVAL (agent --interval, lab default 2).
"""
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import ENV, LabError, Result, main, minor_of, proc_drbd, pve  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MB = int(os.environ.get("BENCH_MB", "64"))
LAT_N = int(os.environ.get("BENCH_LAT_N", "200"))
SIZE_GIB = 10
SIZE_KIB = SIZE_GIB * 1024 * 1024
GLOBAL = "global { usage-count no; }\ncommon { }\n"


def floor_res(name, minor, port):
    """A hand-written resource as close to drbdpool's as matters for timing (protocol C, internal meta)."""
    return f"""resource {name} {{
    net {{ protocol C; ping-int 3; connect-int 2; }}
    on node1 {{ device /dev/drbd{minor} minor {minor}; disk /dev/ssd/{name}; meta-disk internal; address ipv4 10.99.0.1:{port}; }}
    on node2 {{ device /dev/drbd{minor} minor {minor}; disk /dev/ssd/{name}; meta-disk internal; address ipv4 10.99.0.2:{port}; }}
}}
"""


RESULTS = []


def emit(what, value, unit, **kw):
    d = {"what": what, "value": round(value, 3) if isinstance(value, float) else value, "unit": unit}
    d.update(kw)
    RESULTS.append(d)
    print("BENCH " + json.dumps(d, sort_keys=True), flush=True)


def resynced(cluster, minor):
    p1, p2 = proc_drbd(cluster, 1), proc_drbd(cluster, 2)
    if minor not in p1 or minor not in p2:
        raise LabError(f"minor {minor} not configured on both nodes:\n{p1}\n{p2}")
    return p1[minor]["ns"] + p1[minor]["nr"] + p2[minor]["ns"] + p2[minor]["nr"], p1[minor], p2[minor]


def create_ours(cluster, vmid):
    t = time.time()
    cmd = ENV + f"RUST_LOG=debug perl -T /root/pve.pl alloc {vmid} {SIZE_KIB}"
    rc, out, err = cluster.run_full(1, cmd, 180)
    dt = time.time() - t
    with open(os.path.join(cluster.share, f"bench-alloc-{vmid}.err"), "w") as fh:
        fh.write(err)
    if rc != 0:
        raise LabError(f"alloc {vmid} exited {rc}: {err.strip()[-1500:]}")
    r = json.loads(out.strip().splitlines()[-1])
    vol = r["volname"]
    path = pve(cluster, 1, "path", vol)["path"]
    return vol, path, dt, r["seconds"]


def create_floor(cluster, k):
    name, minor, port = f"fl{k}", 50 + k, 7850 + k
    steps = {}
    t0 = t = time.time()
    cluster.par(lambda i: cluster.check(i, f"lvcreate -q -V {SIZE_GIB}G -T ssd/data -n {name} 2>/dev/null && "
                                           f"test -b /dev/ssd/{name}", 120))
    steps["lvcreate"] = time.time() - t
    t = time.time()
    cluster.par(lambda i: cluster.write_file(i, f"/etc/drbd.d/{name}.res", floor_res(name, minor, port)))
    cluster.par(lambda i: cluster.check(i, f"drbdadm -- --force create-md {name} >/dev/null 2>&1 && drbdadm up {name}", 120))
    steps["res+create-md+up"] = time.time() - t
    t = time.time()
    for i in (1, 2):
        cluster.wait_until(i, f"drbdadm cstate {name}", lambda o: o.strip() == "Connected", 60, every=0.1,
                           what=f"{name} Connected")
    steps["Connected"] = time.time() - t
    t = time.time()
    cluster.check(1, f"drbdadm -- --clear-bitmap new-current-uuid {name}", 60)
    for i in (1, 2):
        cluster.wait_until(i, f"drbdadm dstate {name}", lambda o: o.strip() == "UpToDate/UpToDate", 60, every=0.1,
                           what=f"{name} UpToDate/UpToDate")
    steps["skip sync+UpToDate"] = time.time() - t
    return name, minor, time.time() - t0, steps


# The guest's dd (busybox) prints no timing line: time it in the guest with perl's Time::HiRes.
TIMED = "perl -MTime::HiRes=time -e '$t = time; system(@ARGV) == 0 or exit 1; printf qq(%.6f\\n), time - $t' "


def dd(cluster, args, nbytes):
    """Run coreutils `dd args` on node 1; returns (bytes, seconds measured in the guest around dd)."""
    rc, out, err = cluster.run_full(1, TIMED + "/usr/bin/dd " + args + " 2>/dev/null", 600)
    if rc != 0 or not re.fullmatch(r"[\d.]+", out.strip()):
        raise LabError(f"dd {args} failed (rc {rc}): {out[-300:]} {err[-800:]}")
    return nbytes, float(out.strip())


def io_figures(cluster, label, dev, rep):
    b, s = dd(cluster, f"if=/dev/zero of={dev} bs=1M count={MB} oflag=direct", MB << 20)
    thr = b / s / (1 << 20)
    # Latency: blocks the pass above allocated in the thin pool already.
    b2, s2 = dd(cluster, f"if=/dev/zero of={dev} bs=4k count={LAT_N} oflag=direct,dsync", LAT_N * 4096)
    lat = s2 / LAT_N * 1000
    emit(f"write throughput {label}", thr, "MiB/s", mb=MB, dev=dev, rep=rep)
    emit(f"write latency 4k dsync {label}", lat, "ms", n=LAT_N, dev=dev, rep=rep)
    return thr, lat


def io_compare(cluster, devs, reps=2):
    """Each device `reps` times, the order reversed every other time (the shared host drifts);
    returns {label: (mean MiB/s, mean ms)}."""
    got = {label: [] for label, _ in devs}
    for r in range(reps):
        for label, dev in (devs if r % 2 == 0 else list(reversed(devs))):
            got[label].append(io_figures(cluster, label, dev, r + 1))
    return {k: (statistics.mean(t for t, _ in v), statistics.mean(x for _, x in v)) for k, v in got.items()}


def test(cluster):
    tl = cluster.timeline
    table = []
    cluster.setup_nodes(pool="12G")
    cluster.par(lambda i: cluster.write_file(i, "/etc/drbd.d/global_common.conf", GLOBAL)
                if cluster.run(i, "test -s /etc/drbd.d/global_common.conf")[0] != 0 else None)
    cluster.start_agents()
    cluster.wait_agents()
    time.sleep(3)   # let both agents finish their first rounds (space measured, state published)
    tl.mark("nodes ready, agents running")
    emit("agent interval", float(os.environ.get("LAB_AGENT_INTERVAL", "2")), "s")

    # a) creation, alternating ours / floor so drift of the shared host hits both alike.
    ours_t, floor_t, vols, floors = [], [], [], []
    for k in range(1, ROUNDS + 1):
        vol, path, dt, inner = create_ours(cluster, 200 + k)
        time.sleep(2)   # a resync, if one had started, would show in the counters by now
        rs, p1, _ = resynced(cluster, minor_of(path))
        ours_t.append(dt)
        vols.append((vol, path))
        emit("create 10 GiB replicated thin volume: alloc_image through the shim", dt, "s", round=k, vol=vol,
             shim_seconds=inner, resynced_kib=rs, state=f"{p1['cs']} {p1['ds']}")
        tl.mark(f"ours {vol} in {dt:.1f}s, {rs} KiB resynced")

        name, minor, ft, steps = create_floor(cluster, k)
        time.sleep(2)
        rs2, p1, _ = resynced(cluster, minor)
        floor_t.append(ft)
        floors.append((name, minor))
        emit("create 10 GiB replicated thin volume: floor (raw commands by hand)", ft, "s", round=k, res=name,
             resynced_kib=rs2, steps={s: round(v, 2) for s, v in steps.items()}, state=f"{p1['cs']} {p1['ds']}")
        tl.mark(f"floor {name} in {ft:.1f}s ({', '.join(f'{s} {v:.1f}' for s, v in steps.items())}), "
                f"{rs2} KiB resynced")
        table.append((f"create 10 GiB, round {k}: ours / floor / ratio", f"{dt:.1f} / {ft:.1f} / {dt / ft:.2f}",
                      f"resynced KiB: ours {rs}, floor {rs2}"))
    mo, mf = statistics.median(ours_t), statistics.median(floor_t)
    emit("create: median ours / median floor", mo / mf, "ratio", ours=round(mo, 2), floor=round(mf, 2))
    table.append(("create 10 GiB, median: ours / floor / ratio", f"{mo:.1f} / {mf:.1f} / {mo / mf:.2f}", "target <= 1.5"))

    # c) I/O: drbdpool volume vs raw thin LV (and the hand-made DRBD) on node 1.
    for v, _ in vols:   # all Primary on node 1, as the disks of running guests
        pve(cluster, 1, "activate", v)
    vol, path = vols[0]
    cluster.check(1, f"lvcreate -q -V {SIZE_GIB}G -T ssd/data -n rawbench 2>/dev/null && test -b /dev/ssd/rawbench", 120)
    fname, fminor = floors[0]
    cluster.check(1, f"drbdadm primary {fname}", 60)
    io = io_compare(cluster, [("raw thin LV", "/dev/ssd/rawbench"),
                              ("drbdpool volume (Primary, Connected, protocol C)", path),
                              ("hand-made DRBD (protocol C)", f"/dev/drbd{fminor}")])
    (thr_raw, lat_raw), (thr_dp, lat_dp), (thr_fl, lat_fl) = io.values()
    emit("write throughput drbdpool / raw thin LV", thr_dp / thr_raw, "ratio")
    emit("write latency drbdpool / raw thin LV", lat_dp / lat_raw, "ratio")
    table.append((f"write {MB} MiB bs=1M direct, MiB/s (mean of 2): raw LV / hand DRBD / drbdpool",
                  f"{thr_raw:.1f} / {thr_fl:.1f} / {thr_dp:.1f}",
                  f"drbdpool/raw {thr_dp / thr_raw:.2f}, drbdpool/hand DRBD {thr_dp / thr_fl:.2f}"))
    table.append((f"write 4k direct+dsync x{LAT_N}, ms each (mean of 2): raw LV / hand DRBD / drbdpool",
                  f"{lat_raw:.2f} / {lat_fl:.2f} / {lat_dp:.2f}",
                  f"drbdpool/raw {lat_dp / lat_raw:.2f}, drbdpool/hand DRBD {lat_dp / lat_fl:.2f}"))
    tl.mark("I/O figures taken")

    # b) activation on the survivor: every drbdpool volume and the hand-made fl1 are Primary on node 1.
    tl.zero("node1 killed (SIGKILL of its qemu)")
    cluster.kill(1)
    cluster.wait_until(2, "cat /proc/drbd", lambda o: "cs:Connected" not in o, 90, every=0.2, what="peer loss")
    emit("peer loss noticed by node2 after the kill", tl.now(), "s")
    t = time.time()
    cluster.check(2, f"drbdadm primary {fname} && dd if=/dev/zero of=/dev/drbd{fminor} bs=4k count=1 "
                     "oflag=direct 2>/dev/null", 60)
    floor_act = time.time() - t
    emit("activate on survivor: floor (drbdadm primary + 4k direct write)", floor_act, "s")
    for n, (vol, path) in enumerate(vols, 1):
        t = time.time()
        tries, last = 0, ""
        while True:
            tries += 1
            tc = time.time()
            rc, out, err = cluster.run_full(2, ENV + f"RUST_LOG=debug perl -T /root/pve.pl activate {vol}", 120)
            if rc == 0:
                r = json.loads(out.strip().splitlines()[-1])
                with open(os.path.join(cluster.share, f"bench-activate-{vol}.err"), "w") as fh:
                    fh.write(err)
                break
            last = err.strip()[-400:]
            if "marked outdated by the fence-peer handler" in last:
                break   # a finding, not a wait: reported below, the other volumes go on
            if time.time() - t > 240:
                raise LabError(f"{vol}: activation on the survivor still refused after 240 s: {last}")
            time.sleep(0.5)
        call = time.time() - tc
        if rc != 0:
            emit("activate on survivor: REFUSED, replica marked outdated", time.time() - t, "s", vol=vol, nth=n,
                 refusals=tries, since_kill_s=round(tl.now(), 1), refusal=last[-300:])
            table.append((f"activate vol {n} on survivor", "refused",
                          "node2 marked outdated by node1's fence-peer before the kill (see BENCH line)"))
            tl.mark(f"{vol}: refused, node2's replica is marked outdated")
            continue
        cluster.check(2, f"dd if=/dev/zero of={r['path']} bs=4k count=1 oflag=direct 2>/dev/null", 60)
        writable = time.time() - tc
        since_kill = tl.now()
        emit("activate on survivor: ours (shim activate + 4k direct write)", writable, "s", vol=vol, nth=n,
             refusals=tries - 1, call_s=round(call, 2), since_kill_s=round(since_kill, 1),
             from_first_try_s=round(time.time() - t, 1), last_refusal=last[-200:] if last else "")
        table.append((f"activate vol {n} on survivor: call -> writable (ours) / floor",
                      f"{writable:.1f} / {floor_act:.1f}",
                      f"{tries - 1} refusals first; writable {since_kill:.0f}s after the kill"))
        tl.mark(f"{vol} writable on node2 after {tries} attempt(s)")
    # What any call through the shim costs here (perl -T, the plugin, one drbdpool process).
    t = time.time()
    pve(cluster, 2, "path", vols[0][0])
    one = time.time() - t
    emit("one shim call (path) on node2, for scale", one, "s")
    table.append(("one shim call (pve.pl path) on node2, for scale", f"{one:.1f}", ""))
    return Result(table=table)


def report(name, result, seconds):
    emit("whole benchmark", seconds, "s")
    print(f"\n{name} table:")
    for a, b, c in result.table:
        print(f"  {a:<72} {b:>22}   {c}")
    print("(PASS below means the benchmark ran to the end; the targets are judged in the table above)")


if __name__ == "__main__":
    sys.exit(main("bench_lab", test, report=report, drbdpool=True, setup=False, disk_size="16G"))
