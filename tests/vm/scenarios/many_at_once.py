#!/usr/bin/env python3
"""Many at once (issue 16): 10 parallel allocs and 5 parallel linked clones under PVE's real storage lock.

Two guests, DRBD 8.4. PVE holds its storage lock around every alloc_image and clone_image; for shared storage
that is PVE::Cluster::cfs_lock_storage: a directory in /etc/pve/priv/lock, 10 s to get it ("got lock request
timeout"), 60 s to run. The real code of that function is taken from ../shared/third_party's pve-cluster
(PVE/Cluster.pm, at run time, not kept in the repository) and runs in the guests on their shared /etc/pve.
`pve.pl parallel` forks N calls from one preloaded perl -T process, as pvedaemon forks a worker per API call.

1. The floor: 10 parallel `lvcreate -V` of a thin LV under that lock (what LvmThinPlugin's alloc_image does).
2. 10 parallel allocs through the shim: all succeed; the lock is held per call for the helper's decide-and-
   record only; then every volume becomes ready (both replicas UpToDate, 0 KiB resynced) in the background.
3. The old inline alloc (DRBDPOOL_CREATE_INLINE=1, the call waits for the replicas under the lock): the
   same 10 in parallel, to show what the change is for: calls fail with "got lock request timeout".
4. One alloc activated right after it returned, and written (activation waits for ready).
5. One of the allocs made a template (create_base), then 5 parallel linked clones of it through the shim
   (clone_image, PVE's `qm clone` of a template on shared storage takes the same lock): all succeed, each
   becomes ready (thin snapshots of the base on both nodes: the guest loads dm_snapshot, whose target
   lvcreate -s checks for), and one is activated and written.
Figures: lock hold per call (median, max) and lock wait against the floor; how long until all were ready.
"""
import os
import re
import statistics
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dp import LabError, Result, elapsed, main, proc_drbd, pve, voldoc, wait_ready  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SIZE_KIB = 64 * 1024
N_ALLOC = 10
N_CLONE = 5


def third_party():
    return os.environ.get("DRBDPOOL_THIRD_PARTY") or os.path.join(os.path.dirname(REPO), "shared", "third_party")


def real_cfs_lock(share):
    """Write /share/cfs_lock.pl: PVE::Cluster's own `$cfs_lock` and `cfs_lock_storage`, cut from pve-cluster's
    PVE/Cluster.pm, in a package of their own with the two helpers they call (cfs_update reads pmxcfs's
    file versions; check_cfs_quorum asks pmxcfs: the 9p store has no quorum to lose)."""
    tar = os.path.join(third_party(), "pve-cluster-9.1.6.tar.gz")
    if not os.path.isfile(tar):
        raise LabError(f"{tar} not found: the real PVE::Cluster lock code comes from there (or DRBDPOOL_THIRD_PARTY)")
    with tarfile.open(tar) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("src/PVE/Cluster.pm"))
        text = t.extractfile(member).read().decode()
    lock = re.search(r"^my \$cfs_lock = sub \{\n.*?^\};\n", text, re.M | re.S)
    storage = re.search(r"^sub cfs_lock_storage \{\n.*?^\}\n", text, re.M | re.S)
    lockdir = re.search(r'^my \$lockdir = "(/etc/pve/priv/lock)";$', text, re.M)
    if not (lock and storage and lockdir):
        raise LabError(f"{tar}: $cfs_lock, cfs_lock_storage or $lockdir not found in {member.name}")
    code = ("package DPLab::Cfs;\nuse strict;\nuse warnings;\nuse List::Util;\nuse Time::HiRes qw(usleep);\n"
            f"# From {os.path.basename(tar)}:{member.name}, unchanged.\n"
            f'my $lockdir = "{lockdir.group(1)}";\nsub cfs_update {{ }}\nsub check_cfs_quorum {{ return 1; }}\n'
            + lock.group(0) + "\n" + storage.group(0) + "\n1;\n")
    with open(os.path.join(share, "cfs_lock.pl"), "w") as fh:
        fh.write(code)
    return "/share/cfs_lock.pl"


def summary(calls):
    holds = [c["hold"] for c in calls if c.get("hold") is not None]
    waits = [c["wait"] for c in calls]
    return {"ok": sum(1 for c in calls if c["ok"]), "hold_median": statistics.median(holds) if holds else None,
            "hold_max": max(holds) if holds else None, "wait_max": max(waits) if waits else None,
            "errors": sorted({c.get("error", "") for c in calls if not c["ok"]})}


def test(cluster):
    tl = cluster.timeline
    figures = {"boot both guests (parallel), s": cluster.boot_seconds}
    env = {"DP_CFS_LOCK_PL": real_cfs_lock(cluster.share), "DRBDPOOL_CREATE_LOG": "/share/node1-create.log"}

    floor = pve(cluster, 1, "parallel", N_ALLOC, "floor", 900, SIZE_KIB, env=env, timeout=300)["calls"]
    f = summary(floor)
    tl.mark(f"floor: {f['ok']}/{N_ALLOC} lvcreate under the lock, hold median {f['hold_median']} s, max {f['hold_max']} s")
    cluster.check(1, "for i in $(seq 900 909); do lvremove -q -y ssd/floor-$i; done", 120)

    t = time.time()
    ours = pve(cluster, 1, "parallel", N_ALLOC, "alloc", 200, SIZE_KIB, env=env, timeout=300)["calls"]
    o = summary(ours)
    tl.mark(f"{o['ok']}/{N_ALLOC} allocs returned in {elapsed(t):.1f} s, hold median {o['hold_median']} s, max {o['hold_max']} s")
    if o["ok"] != N_ALLOC:
        raise LabError(f"parallel allocs failed: {o['errors']}; calls {ours}")
    vols = [c["volname"] for c in ours]
    ready = wait_ready(cluster, vols, 240, 1, env["DRBDPOOL_CREATE_LOG"])
    tl.mark(f"all {N_ALLOC} volumes ready {ready:.1f} s later")
    figures["10 parallel allocs: all returned, s"] = round(elapsed(t) - ready, 1)
    figures["10 parallel allocs: all ready after the calls returned, s"] = round(ready, 1)
    # 0 KiB resynced at creation: thin volumes skip the initial sync, also when made 10 at a time
    # (nothing has written to them yet, so ns+nr is resync traffic only).
    minors = {voldoc(cluster, v)["minor"] for v in vols}
    resynced = sum(d["ns"] + d["nr"] for i in (1, 2) for m, d in proc_drbd(cluster, i).items() if m in minors)
    figures["KiB resynced over the 10 new volumes (both nodes, ns+nr)"] = resynced
    if resynced:
        raise LabError(f"{resynced} KiB resynced: creation should skip the initial sync")

    # Activation right after creation waits for ready: the next alloc, activated at once, and written.
    vol = pve(cluster, 1, "alloc", 299, SIZE_KIB, env=env)["volname"]
    a = pve(cluster, 1, "activate", vol, env=env)
    cluster.check(1, f"dd if=/dev/urandom of={a['path']} bs=4k count=1 oflag=direct status=none", 60)
    figures["alloc then activate at once: activate waited, s"] = a["seconds"]
    pve(cluster, 1, "deactivate", vol)
    tl.mark(f"{vol} allocated, activated at once ({a['seconds']} s) and written")

    # 5 parallel linked clones of a template, under the same lock.
    base = pve(cluster, 1, "base", vols[0], env=env)["volname"]
    t = time.time()
    clones = pve(cluster, 1, "parallel", N_CLONE, "clone", base, 400, env=env, timeout=300)["calls"]
    c = summary(clones)
    tl.mark(f"{c['ok']}/{N_CLONE} linked clones of {base} returned in {elapsed(t):.1f} s, "
            f"hold median {c['hold_median']} s, max {c['hold_max']} s")
    if c["ok"] != N_CLONE:
        raise LabError(f"parallel linked clones failed: {c['errors']}; calls {clones}")
    names = [x["volname"].split("/")[-1] for x in clones]  # PVE's name is <base>/<clone>
    ready = wait_ready(cluster, names, 240, 1, env["DRBDPOOL_CREATE_LOG"])
    tl.mark(f"all {N_CLONE} clones ready {ready:.1f} s later")
    a = pve(cluster, 1, "activate", clones[0]["volname"], env=env)
    cluster.check(1, f"dd if=/dev/urandom of={a['path']} bs=4k count=1 oflag=direct status=none", 60)
    pve(cluster, 1, "deactivate", clones[0]["volname"])
    figures.update({
        "5 parallel linked clones: ok": c["ok"],
        "5 parallel linked clones: lock hold median / max, s": f"{c['hold_median']} / {c['hold_max']}",
        "5 parallel linked clones: lock wait max, s": c["wait_max"],
        "5 parallel linked clones: all ready after the calls returned, s": round(ready, 1),
    })

    old = pve(cluster, 1, "parallel", N_ALLOC, "alloc", 500, SIZE_KIB, env=dict(env, DRBDPOOL_CREATE_INLINE=1),
              timeout=400)["calls"]
    b = summary(old)
    tl.mark(f"inline alloc (before): {b['ok']}/{N_ALLOC} succeeded, hold median {b['hold_median']} s; {b['errors']}")

    figures.update({
        "floor (lvcreate -V under the lock), 10 parallel: ok": f["ok"],
        "floor: lock hold median / max, s": f"{f['hold_median']} / {f['hold_max']}",
        "floor: lock wait max, s": f["wait_max"],
        "10 parallel allocs: ok": o["ok"],
        "10 parallel allocs: lock hold median / max, s": f"{o['hold_median']} / {o['hold_max']}",
        "10 parallel allocs: lock wait max, s": o["wait_max"],
        "inline alloc (before), 10 parallel: ok": b["ok"],
        "inline alloc (before): lock hold median / max, s": f"{b['hold_median']} / {b['hold_max']}",
        "inline alloc (before): errors": "; ".join(b["errors"]),
    })
    return Result(figures)


if __name__ == "__main__":
    sys.exit(main("many_at_once", test, drbdpool=True))
