"""Helpers shared by the drbdpool scenarios: node setup, the agent, calls through the Perl shim, /proc/drbd.

The guests get the drbdpool binary at /usr/bin/drbdpool (the shim's default helper path) and the shim at
/opt/perl-shim (lab.drbdpool_files); the 9p cluster store is the guests' /etc/pve (pmxcfs stand-in), so the
store is at its default /etc/pve/priv/drbdpool; /etc/drbdpool.env (written at boot) sets DRBDPOOL_STORE to
that, DRBDPOOL_NODE=nodeI, DRBDPOOL_DRBD=real and PERL5LIB.
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab import Lab, LabError  # noqa: E402,F401

ENV = ". /etc/drbdpool.env; "
STOREID = "dp"

# The driver for PVE calls (tests/vm/pve.pl), /root/pve.pl in every guest.
PVE_PL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pve.pl")


def make_lab(n=2):
    """A lab with the drbdpool binary, the shim and the PVE driver script (/root/pve.pl) in every guest,
    also after a restart (they travel in the second cpio)."""
    return Lab(n, name=os.environ.get("LAB_RUN_NAME"), drbdpool=True, extra_files={"/root/pve.pl": PVE_PL})


def setup_nodes(lab, pool="3G"):
    """VG `ssd` with thin pool `data` on each guest's virtio disk; every node registered in the store."""
    lab.par(lambda i: lab.check(i, f"pvcreate -q /dev/vda && vgcreate -q ssd /dev/vda && "
                                   f"lvcreate -q -L {pool} -T ssd/data", 120))
    for i in lab.guests:
        lab.check(1, ENV + f"drbdpool node add node{i} --address 10.99.0.{i}", 60)


def start_agent(lab, i, interval=None):
    """`drbdpool agent` in the background (what its systemd unit does); log in /share/nodeI-agent.log.
    Interval: LAB_AGENT_INTERVAL (default 2 s: short, so creating a volume does not wait for a round)."""
    interval = interval or os.environ.get("LAB_AGENT_INTERVAL", "2")
    lab.check(i, ENV + f"setsid drbdpool agent --interval {interval} >>/share/node{i}-agent.log 2>&1 "
                       "</dev/null & echo $! >/run/drbdpool-agent.pid", 30)


def wait_agents(lab, nodes, timeout=90):
    """Until each node's agent has published its state in the store."""
    for i in nodes:
        lab.wait_until(i, f"test -s /etc/pve/priv/drbdpool/state/node{i}.json && echo ok", lambda o: "ok" in o, timeout,
                       every=1, what=f"node{i}'s agent to publish its state")


def pve(lab, i, *args, timeout=120, env=None):
    """Call the Perl shim on guest i: returns the decoded JSON line; raises LabError with its message.
    env: extra environment for the perl process, e.g. {"PVE_MIGRATED_FROM": "node1"} (what qemu-server sets
    on the target of a live migration before activate_volumes)."""
    pre = "".join(f"{k}={v} " for k, v in (env or {}).items())
    cmd = ENV + pre + "perl -T /root/pve.pl " + " ".join(str(a) for a in args)
    rc, out, err = lab.run_full(i, cmd, timeout)
    if rc != 0:
        raise LabError(f"node{i}: pve.pl {' '.join(map(str, args))} exited {rc}: {err.strip()[-1500:]}")
    return json.loads(out.strip().splitlines()[-1])


def pve_try(lab, i, *args, timeout=120, env=None):
    """(ok, result or error message)."""
    try:
        return True, pve(lab, i, *args, timeout=timeout, env=env)
    except LabError as e:
        return False, str(e)


PROC_RE = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+) ds:(\S+).*?\n\s*ns:(\d+) nr:(\d+) dw:(\d+) dr:(\d+)"
                     r".*?oos:(\d+)", re.M | re.S)


def proc_drbd(lab, i):
    """{minor: {cs, ro, ds, ns, nr, dw, dr, oos}} from /proc/drbd (8.4 format, KiB counters)."""
    out = lab.check(i, "cat /proc/drbd")
    res = {}
    for m in PROC_RE.finditer(out):
        d = dict(zip(("cs", "ro", "ds"), m.groups()[1:4]))
        d.update(zip(("ns", "nr", "dw", "dr", "oos"), map(int, m.groups()[4:])))
        res[int(m.group(1))] = d
    return res


def voldoc(lab, vol, storeid=STOREID):
    """The volume's document in the cluster store, read on the host (the 9p directory)."""
    with open(os.path.join(lab.store, "priv", "drbdpool", "volumes", storeid, f"{vol}.json")) as fh:
        return json.load(fh)


def drbdsetup_show(lab, i, res):
    """`drbdsetup-84 show <res>`: the kernel's runtime configuration of the resource (non-default options)."""
    return lab.check(i, "s=$(ls /usr/lib/drbd/drbdsetup-84 /lib/drbd/drbdsetup-84 2>/dev/null | head -1); "
                        f'[ -n "$s" ] || {{ echo no drbdsetup-84 >&2; exit 1; }}; "$s" show {res}', 30)


def minor_of(path):
    m = re.match(r"^/dev/drbd(\d+)$", path)
    if not m:
        raise LabError(f"unexpected device path {path!r} (expected /dev/drbd<minor>)")
    return int(m.group(1))


def print_figures(title, figures):
    print(f"\n{title}:")
    for k, v in figures.items():
        if isinstance(v, float):
            print(f"  {k:<72} {v:8.1f}")
        else:
            print(f"  {k:<72} {v}")


def elapsed(t):
    return time.time() - t
