"""Helpers shared by the drbdpool scenarios: calls through the Perl shim, /proc/drbd, the store, drbdsetup.

Each takes the scenario's cluster (cluster.py) first. The guests get the drbdpool binary at /usr/bin/drbdpool
(the shim's default helper path), the shim at /opt/perl-shim (lab.drbdpool_files) and the PVE driver at
/root/pve.pl (tests/vm/pve.pl); the 9p cluster store is the guests' /etc/pve (pmxcfs stand-in), so the store
is at its default /etc/pve/priv/drbdpool; /etc/drbdpool.env (written at boot) sets DRBDPOOL_STORE to that,
DRBDPOOL_NODE=nodeI, DRBDPOOL_DRBD=real and PERL5LIB.
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cluster import ENV, Result, main  # noqa: E402,F401
from lab import LabError  # noqa: E402,F401

STOREID = "dp"


def pve(cluster, i, *args, timeout=120, env=None):
    """Call the Perl shim on guest i: returns the decoded JSON line; raises LabError with its message.
    env: extra environment for the perl process, e.g. {"PVE_MIGRATED_FROM": "node1"} (what qemu-server sets
    on the target of a live migration before activate_volumes)."""
    pre = "".join(f"{k}={v} " for k, v in (env or {}).items())
    cmd = ENV + pre + "perl -T /root/pve.pl " + " ".join(str(a) for a in args)
    rc, out, err = cluster.run_full(i, cmd, timeout)
    if rc != 0:
        raise LabError(f"node{i}: pve.pl {' '.join(map(str, args))} exited {rc}: {err.strip()[-1500:]}")
    return json.loads(out.strip().splitlines()[-1])


def wait_ready(cluster, vols, limit, i=1, log="/var/log/drbdpool/create.log"):
    """Seconds until every volume's document says ready; raises after `limit` with the states and the tail of
    guest i's creation log (`log`: where its `drbdpool finish-create` wrote, DRBDPOOL_CREATE_LOG)."""
    t = time.time()
    while True:
        states = {v: voldoc(cluster, v).get("state") for v in vols}
        if all(s == "ready" for s in states.values()):
            return elapsed(t)
        if elapsed(t) > limit:
            raise LabError(f"not ready {limit} s on: {states}; node{i}'s {log}:\n"
                           + cluster.check(i, f"tail -30 {log} 2>/dev/null || true"))
        time.sleep(0.2)


def alloc_ready(cluster, i, vmid, size_kib, env=None, timeout=180):
    """alloc_image through the shim on guest i, then wait until the volume's document says ready: the
    call returns once the volume is recorded and its replicas are made after it (src/protocol/finish.rs).
    (volname, seconds of the call, seconds from the call's start until ready)."""
    t = time.time()
    vol = pve(cluster, i, "alloc", vmid, size_kib, timeout=timeout, env=env)["volname"]
    call = elapsed(t)
    wait_ready(cluster, [vol], timeout, i, (env or {}).get("DRBDPOOL_CREATE_LOG", "/var/log/drbdpool/create.log"))
    return vol, call, elapsed(t)


def pve_try(cluster, i, *args, timeout=120, env=None):
    """(ok, result or error message)."""
    try:
        return True, pve(cluster, i, *args, timeout=timeout, env=env)
    except LabError as e:
        return False, str(e)


def activate_retrying(cluster, i, vol, limit=240):
    """Activate through the shim until the helper allows it, every 2 s (what the HA manager does on a
    survivor); (seconds, attempts, last refusal). Raises LabError after `limit` seconds."""
    t, tries, last = time.time(), 0, ""
    while True:
        tries += 1
        ok, r = pve_try(cluster, i, "activate", vol)
        if ok:
            return elapsed(t), tries, last
        last = r
        if elapsed(t) > limit:
            raise LabError(f"{vol}: activation on node{i} still refused after {limit} s: {last}")
        time.sleep(2)


PROC_RE = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+) ds:(\S+).*?\n\s*ns:(\d+) nr:(\d+) dw:(\d+) dr:(\d+)"
                     r".*?oos:(\d+)", re.M | re.S)


def proc_drbd(cluster, i):
    """{minor: {cs, ro, ds, ns, nr, dw, dr, oos}} from /proc/drbd (8.4 format, KiB counters)."""
    out = cluster.check(i, "cat /proc/drbd")
    res = {}
    for m in PROC_RE.finditer(out):
        d = dict(zip(("cs", "ro", "ds"), m.groups()[1:4]))
        d.update(zip(("ns", "nr", "dw", "dr", "oos"), map(int, m.groups()[4:])))
        res[int(m.group(1))] = d
    return res


def voldoc(cluster, vol, storeid=STOREID):
    """The volume's document in the cluster store, read on the host (the 9p directory)."""
    with open(os.path.join(cluster.store, "priv", "drbdpool", "volumes", storeid, f"{vol}.json")) as fh:
        return json.load(fh)


# drbd-utils' 8.4 drbdsetup, which is not on PATH: a shell expression for its path.
DRBDSETUP84 = "$(ls /usr/lib/drbd/drbdsetup-84 /lib/drbd/drbdsetup-84 2>/dev/null | head -1)"


def drbdsetup_show(cluster, i, res):
    """`drbdsetup-84 show <res>`: the kernel's runtime configuration of the resource (non-default options)."""
    return cluster.check(i, f"s={DRBDSETUP84}; "
                        f'[ -n "$s" ] || {{ echo no drbdsetup-84 >&2; exit 1; }}; "$s" show {res}', 30)


def minor_of(path):
    m = re.match(r"^/dev/drbd(\d+)$", path)
    if not m:
        raise LabError(f"unexpected device path {path!r} (expected /dev/drbd<minor>)")
    return int(m.group(1))


def elapsed(t):
    return time.time() - t
