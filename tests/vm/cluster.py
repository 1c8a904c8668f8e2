"""The cluster a lab scenario runs on, and the runner that gives the scenario its verdict.

A scenario is a function of the cluster (scenarios/*.py):

    def test(cluster):
        ...                               # cluster.check(1, cmd), pve(cluster, 1, "alloc", ...), ...
        return Result(figures)            # or raise: the scenario failed

    if __name__ == "__main__":
        sys.exit(main("demo", test, drbdpool=True))

main() makes the cluster, starts it (boots the guests) and sets it up, calls test(cluster), tears the
cluster down whatever happened, prints the figures and then `<name>: PASS`, or `<name>: FAIL (...)` when
test raised or its result has findings; its return value is the exit code (0 for PASS), which
run.sh reads.

Cluster is a Lab (lab.py: the qemu guests, their disks, links and control channels) with the project on
it: with drbdpool=True every guest has the drbdpool binary, the Perl shim and the PVE driver pve.pl
(/root/pve.pl), and set-up makes VG `ssd` with thin pool `data` on each guest's disk, registers every
node in the store, starts `drbdpool agent` on each and waits until each has published its state.
"""
import os
import sys
import time
import traceback

from lab import Lab, LabSkip

HERE = os.path.dirname(os.path.abspath(__file__))
# The guests' /etc/drbdpool.env (written at boot, lab.drbdpool_files): DRBDPOOL_STORE, DRBDPOOL_NODE,
# DRBDPOOL_BIN, DRBDPOOL_DRBD=real and PERL5LIB, for every drbdpool or shim command.
ENV = ". /etc/drbdpool.env; "


class Cluster(Lab):
    def __init__(self, n=2, drbdpool=False, setup=True, pool="3G", **lab):
        """n guests (Lab's keyword arguments pass through). drbdpool: the project's files in every guest
        (also after a restart: they travel in the second cpio) and, with setup, the drbdpool set-up at
        start; setup=False leaves the set-up steps (setup_nodes, start_agents, wait_agents) to the
        scenario. pool: the size of each node's thin pool."""
        extra = dict(lab.pop("extra_files", None) or {})
        if drbdpool:
            extra["/root/pve.pl"] = os.path.join(HERE, "pve.pl")
        super().__init__(n, name=lab.pop("name", None) or os.environ.get("LAB_RUN_NAME"), drbdpool=drbdpool,
                         extra_files=extra, **lab)
        self.drbdpool, self.setup, self.pool = drbdpool, setup, pool
        self.setup_seconds = None

    def start(self, boot_timeout=180):
        """Boot the guests; with drbdpool and setup, set them up (setup_seconds: how long that took)."""
        super().start(boot_timeout)
        if self.drbdpool and self.setup:
            t = time.time()
            self.setup_nodes()
            self.start_agents()
            self.wait_agents()
            self.setup_seconds = time.time() - t
        return self

    def setup_nodes(self, pool=None):
        """VG `ssd` with thin pool `data` on each guest's virtio disk; every node registered in the store."""
        pool = pool or self.pool
        self.par(lambda i: self.check(i, f"pvcreate -q /dev/vda && vgcreate -q ssd /dev/vda && "
                                         f"lvcreate -q -L {pool} -T ssd/data", 120))
        for i in self.guests:
            self.check(1, ENV + f"drbdpool node add node{i} --address 10.99.0.{i}", 60)

    def start_agent(self, i, interval=None):
        """`drbdpool agent` in the background (what its systemd unit does); log in /share/nodeI-agent.log.
        Interval: LAB_AGENT_INTERVAL (default 2 s: short, so creating a volume does not wait for a round)."""
        interval = interval or os.environ.get("LAB_AGENT_INTERVAL", "2")
        self.check(i, ENV + f"setsid drbdpool agent --interval {interval} >>/share/node{i}-agent.log 2>&1 "
                            "</dev/null & echo $! >/run/drbdpool-agent.pid", 30)

    def start_agents(self):
        for i in self.guests:
            self.start_agent(i)

    def wait_agents(self, nodes=None, timeout=90):
        """Until each node's agent has published its state in the store."""
        for i in nodes or self.guests:
            self.wait_until(i, f"test -s /etc/pve/priv/drbdpool/state/node{i}.json && echo ok", lambda o: "ok" in o,
                            timeout, every=1, what=f"node{i}'s agent to publish its state")


class Result:
    """What a scenario returns. figures: {what: seconds or a value}, printed after the cluster is down,
    with the whole run's duration added. findings: expectations the product does not meet yet, found by a
    scenario that still ran to its end; each one fails it. table: rows (what, figure, note) of a scenario
    that prints a table of its own (bench_lab, with its own report)."""

    def __init__(self, figures=None, findings=(), table=None):
        self.figures = dict(figures or {})
        self.findings = list(findings)
        self.table = table


def print_figures(title, figures):
    print(f"\n{title}:")
    for k, v in figures.items():
        if isinstance(v, float):
            print(f"  {k:<72} {v:8.1f}")
        else:
            print(f"  {k:<72} {v}")


def report_figures(name, result, seconds):
    """The default report: the figures with `whole scenario, s`, then the findings, if any."""
    result.figures["whole scenario, s"] = seconds
    print_figures(f"{name} figures", result.figures)
    if result.findings:
        print(f"\n{name} findings (expectations the product does not meet yet):")
        for f in result.findings:
            print(f"  - {f}")


def main(name, test, report=report_figures, **cluster):
    """Run the scenario `test` on a Cluster(**cluster): returns the exit code, 0 when it passed.
    report(name, result, seconds) prints what the scenario measured once the cluster is down; seconds is
    the whole run, from before the boot to after the tear-down."""
    t_all = time.time()
    c = Cluster(**cluster)
    try:
        try:
            c.start()
            result = test(c)
        finally:
            c.stop()
    except LabSkip as e:
        # A part this machine lacks (the DRBD 9 source): SKIP (exit 77), but a failure under CI=true,
        # where every part must be there.
        if os.environ.get("CI") == "true":
            print(f"{name}: FAIL (CI=true and {e})", flush=True)
            return 1
        print(f"{name}: SKIP ({e})", flush=True)
        return 77
    except Exception as e:  # noqa: BLE001 - the scenario's failure, reported as its verdict
        sys.stdout.flush()   # the timeline so far, then the traceback
        traceback.print_exc()
        sys.stderr.flush()
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"{name}: FAIL ({type(e).__name__}: {first[:200]})", flush=True)
        return 1
    if not isinstance(result, Result):
        print(f"{name}: FAIL (the scenario returned {result!r}, not a Result)", flush=True)
        return 1
    report(name, result, time.time() - t_all)
    if result.findings:
        print(f"{name}: FAIL ({len(result.findings)} finding(s))", flush=True)
        return 1
    print(f"{name}: PASS", flush=True)
    return 0
