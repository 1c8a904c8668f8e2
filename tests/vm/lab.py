#!/usr/bin/env python3
"""The real-kernel lab: N qemu guests (Debian 12 kernel, DRBD 8.4, LVM thin) driven from Python (stdlib only).

    lab = Lab(2).start()              # boots both guests in parallel
    rc, out = lab.run(1, "cat /proc/drbd", timeout=30)
    lab.kill(1)                       # hard power-off: SIGKILL of its qemu
    lab.restart(1)                    # boots it again on the same disk
    lab.stop()

Each guest (512 MiB, 1 vCPU, software emulation) has:
  - its own virtio disk, a sparse raw file (its "SSD"), kept across kill/restart;
  - one virtio NIC per peer, each a point-to-point UDP link between two qemu processes on 127.0.0.1
    (qemu `-netdev socket,udp=...,localaddr=...`). The guests' addresses 10.99.0.I exist only inside these
    links, never on the host. UDP needs no connection, so a killed and restarted guest simply rejoins
    (a TCP listen/connect pair would stay broken on the connect side); loopback has no multicast here, so
    `mcast=` is not an option;
  - the cluster store: one host directory shared with every guest over 9p (virtio, cache=none) at /store.
    All guests see one consistent directory and mkdir/rename are atomic on the host file system, which is
    what drbdpool's store needs from pmxcfs (/etc/pve) in production;
  - a second 9p directory at /share (work/<run>/share) for logs and records that must outlive a killed
    guest (the cluster store stays clean);
  - a control channel on its second serial port (a unix socket on the host): run() sends a base64 command
    line and reads back base64 stdout/stderr and the exit code between markers (protocol in init.sh).

Every guest's kernel console, qemu stderr and control traffic are logged under tests/vm/work/<run>/.
Environment: LAB_ACCEL (default tcg,thread=multi: the host's KVM is a PVM type that fails with stock
kernels), LAB_QEMU (qemu binary), LAB_SMP (vCPUs per guest, default 1), LAB_MEM (MiB, default 512).
"""
import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(HERE, "work")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_guest", os.path.join(HERE, "build-guest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


builder = _load_builder()


class LabSkip(Exception):
    """A part the scenario needs is not on this machine (said why); the runner reports SKIP."""


class LabError(Exception):
    pass


class Timeline:
    """Prints events as `T+m:ss.s message` relative to a zero point (reset with zero())."""

    def __init__(self, out=sys.stdout):
        self.t0 = time.time()
        self.out = out
        self.events = []

    def zero(self, msg=None):
        self.t0 = time.time()
        if msg:
            self.mark(msg)

    def now(self):
        return time.time() - self.t0

    def mark(self, msg):
        t = self.now()
        self.events.append((t, msg))
        sign = "-" if t < 0 else "+"
        t = abs(t)
        print(f"T{sign}{int(t // 60)}:{t % 60:04.1f}  {msg}", file=self.out, flush=True)
        return t


class Guest:
    def __init__(self, lab, i):
        self.lab, self.i = lab, i
        self.name = f"node{i}"
        d = lab.dir
        self.disk = os.path.join(d, f"{self.name}.disk")
        self.sock = os.path.join(d, f"{self.name}.ctl.sock")
        self.console_log = os.path.join(d, f"{self.name}.console.log")
        self.ctl_log = open(os.path.join(d, f"{self.name}.ctl.log"), "a", buffering=1)
        self.proc = None
        self.conn = None
        self.buf = b""
        self.cond = threading.Condition()
        self.alive = False
        self.boots = 0
        self.seq = 0
        self.lock = threading.Lock()   # one command at a time on the channel

    # ------------------------------------------------------------ process
    def argv(self):
        lab = self.lab
        a = [lab.qemu, "-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-no-reboot",
             "-machine", "pc", "-accel", lab.accel, "-m", str(lab.mem), "-smp", str(lab.smp),
             "-kernel", lab.kernel, "-initrd", lab.initrd,
             "-append", f"console=ttyS0 panic=-1 lab.id={self.i} {lab.append}".strip(),
             "-chardev", f"file,id=con,path={self.console_log},append=on", "-serial", "chardev:con",
             # wait=on: qemu waits for the harness to connect, so no byte of the channel is lost
             "-chardev", f"socket,id=ctl,path={self.sock},server=on,wait=on", "-serial", "chardev:ctl",
             "-monitor", "none",
             # cache=unsafe: guest flushes are not forced to the host disk. Killing qemu still keeps every
             # write it completed (they are in the host page cache); only a host crash would lose them.
             "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe,discard=unmap"]
        for j in range(1, lab.n + 1):
            if j == self.i:
                continue
            a += ["-netdev", f"socket,id=p{j},udp=127.0.0.1:{lab.port(j, self.i)},"
                             f"localaddr=127.0.0.1:{lab.port(self.i, j)}",
                  "-device", f"virtio-net-pci,netdev=p{j},mac=52:54:00:99:{self.i:02x}:{j:02x}"]
        if lab.store:
            a += ["-virtfs", f"local,path={lab.store},mount_tag=store,security_model=none,id=store"]
        a += ["-virtfs", f"local,path={lab.share},mount_tag=share,security_model=none,id=share"]
        return a

    def spawn(self):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.boots += 1
        with open(self.console_log, "a") as fh:
            fh.write(f"\n===== lab: boot {self.boots} of {self.name} at {time.strftime('%H:%M:%S')} =====\n")
        self.ctl_log.write(f"===== boot {self.boots} =====\n")
        qlog = open(os.path.join(self.lab.dir, f"{self.name}.qemu.log"), "a")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                     start_new_session=True)
        qlog.close()
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"{self.name}: qemu exited with {self.proc.returncode} at start, "
                               f"see {self.lab.dir}/{self.name}.qemu.log")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                break
            except OSError:
                s.close()
                if time.time() > deadline:
                    raise LabError(f"{self.name}: control socket {self.sock} did not appear")
                time.sleep(0.05)
        self.conn = s
        self.buf = b""
        self.alive = True
        threading.Thread(target=self._reader, args=(s,), daemon=True).start()

    def _reader(self, s):
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            with self.cond:
                if s is not self.conn:
                    return
                if not data:
                    self.alive = False
                    self.cond.notify_all()
                    return
                self.buf += data
                self.cond.notify_all()

    def wait_marker(self, marker, timeout):
        """Wait until `marker` (bytes) is in the channel buffer; return and consume everything up to
        and including the line it ends."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                k = self.buf.find(marker)
                if k >= 0:
                    e = self.buf.find(b"\n", k)
                    if e >= 0:
                        chunk, self.buf = self.buf[:e + 1], self.buf[e + 1:]
                        return chunk
                if not self.alive:
                    raise LabError(f"{self.name}: guest is down (qemu gone) while waiting for {marker!r}")
                left = deadline - time.time()
                if left <= 0:
                    raise LabError(f"{self.name}: timeout after {timeout}s waiting for {marker!r}")
                self.cond.wait(min(left, 1.0))

    def wait_ready(self, timeout):
        self.wait_marker(b"@@LAB-READY", timeout)

    def run(self, cmd, timeout):
        with self.lock:
            self.seq += 1
            rid = f"{self.boots}.{self.seq}"
            line = f"{rid} {base64.b64encode(cmd.encode()).decode()} {int(max(1, timeout))}\n"
            self.ctl_log.write(f"[{time.strftime('%H:%M:%S')}] $ {cmd}\n")
            if not self.alive:
                raise LabError(f"{self.name}: guest is down")
            self.conn.sendall(line.encode())
            # the guest kills the command at `timeout`; allow it a little slack to report
            chunk = self.wait_marker(f"@@LAB-END {rid} ".encode(), timeout + 15)
            b = chunk.find(f"@@LAB-BEGIN {rid}\n".encode())
            m = chunk.find(f"@@LAB-ERR {rid}\n".encode())
            e = chunk.find(f"@@LAB-END {rid} ".encode())
            if b < 0 or m < 0:
                raise LabError(f"{self.name}: garbled reply to {rid}: {chunk[-300:]!r}")
            out = base64.b64decode(b"".join(chunk[b:m].split(b"\n")[1:]))
            err = base64.b64decode(b"".join(chunk[m:e].split(b"\n")[1:]))
            rc = int(chunk[e:].split()[2])
            out_s = out.decode(errors="replace")
            err_s = err.decode(errors="replace")
            self.ctl_log.write(f"  rc={rc}\n" + "".join(f"  | {l}\n" for l in out_s.splitlines()[-200:])
                               + "".join(f"  ! {l}\n" for l in err_s.splitlines()[-200:]))
            if rc == 137 and timeout:
                err_s += f"\n[lab: command killed after {timeout}s timeout]"
            return rc, out_s, err_s

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with self.cond:
            self.alive = False
            self.cond.notify_all()
        if self.conn:
            try:
                self.conn.close()
            except OSError:
                pass
        self.ctl_log.write(f"[{time.strftime('%H:%M:%S')}] ===== killed (SIGKILL) =====\n")


class Lab:
    def __init__(self, n=2, name=None, disk_size="4G", store=True, extra_files=None, drbdpool=False,
                 mem=None, smp=None, drbd=84):
        """n guests. extra_files: {guest path: host path (file or directory) or bytes (content, mode 755)},
        added as a second cpio at every boot.
        drbdpool=True adds the drbdpool binary (env DRBDPOOL_BIN or target/release/drbdpool) as
        /usr/local/bin/drbdpool and the Perl shim (perl-shim/) as /opt/perl-shim."""
        if n < 1 or n > 8:
            raise LabError("a lab has 1 to 8 guests")
        self.n = n
        self.disk_size = disk_size
        self.name = name or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.dir = os.path.join(WORK, self.name)
        self.accel = os.environ.get("LAB_ACCEL", "tcg,thread=multi")
        self.qemu = os.environ.get("LAB_QEMU", "qemu-system-x86_64")
        self.smp = int(os.environ.get("LAB_SMP", "1"))
        self.mem = int(mem or os.environ.get("LAB_MEM", "512"))
        self.append = os.environ.get("LAB_APPEND", "")
        self.store = None
        self._want_store = store
        self.extra = dict(extra_files or {})
        if drbdpool:
            self.extra.update(drbdpool_files())
        if drbd not in (84, 9):
            raise LabError(f"drbd={drbd!r}: the lab has the flavours 84 (the kernel's own module) and 9")
        self.drbd = drbd
        self.guests = {}
        self.ports = {}
        self.timeline = Timeline()

    def port(self, i, j):
        """The UDP port on which guest i receives frames from guest j."""
        return self.ports[(i, j)]

    def _alloc_ports(self):
        socks = []
        for i in range(1, self.n + 1):
            for j in range(1, self.n + 1):
                if i != j:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind(("127.0.0.1", 0))
                    socks.append(s)
                    self.ports[(i, j)] = s.getsockname()[1]
        for s in socks:
            s.close()

    def _initrd(self, gdir):
        """The guest's cpio.gz, then (if any) a second uncompressed cpio with the extra files."""
        base = os.path.join(gdir, "guest.cpio.gz")
        if not self.extra:
            return base
        tree = os.path.join(self.dir, "overlay")
        for gpath, src in self.extra.items():
            dst = os.path.join(tree, gpath.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if isinstance(src, bytes):          # file content
                with open(dst, "wb") as fh:
                    fh.write(src)
                os.chmod(dst, 0o755)
            elif not os.path.exists(src):
                raise LabError(f"extra file for {gpath}: {src} does not exist")
            elif os.path.isdir(src):
                shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
                # a debug build carries ~50 MB of debug info the guest's RAM does not need
                if builder.elf_needed(dst) is not None and shutil.which("strip"):
                    subprocess.run(["strip", "--strip-debug", dst], check=False)
        self._check_libs(tree, gdir)
        out = os.path.join(self.dir, "initrd.img")
        with open(out, "wb") as fh:
            with open(base, "rb") as b:
                shutil.copyfileobj(b, fh)
            fh.write(b"\0" * ((-fh.tell()) % 512))   # the kernel skips zero padding between archives
            builder.write_cpio(fh, builder.cpio_entries(tree))
        return out

    def _check_libs(self, tree, gdir):
        import json
        libs = set(json.load(open(os.path.join(gdir, "manifest.json")))["libs"])
        for r, _, files in os.walk(tree):
            for f in files:
                p = os.path.join(r, f)
                try:
                    needed = builder.elf_needed(p) if not os.path.islink(p) else None
                except Exception:
                    needed = None
                for lib in needed or []:
                    if lib not in libs:
                        raise LabError(f"{os.path.relpath(p, tree)} needs {lib}, which the guest does not "
                                       f"have (built against another glibc/distribution than Debian 12?)")

    def start(self, boot_timeout=180):
        prune_work(keep=int(os.environ.get("LAB_KEEP_RUNS", "20")))
        os.makedirs(self.dir, exist_ok=True)
        self.timeline.mark(f"lab {self.name}: building/reusing the guest")
        gdir = builder.build()
        self.kernel = os.path.join(gdir, "vmlinuz")
        if self.drbd == 9:
            self.extra.update(drbd9_files(gdir))
            self.append = f"{self.append} lab.drbd=9".strip()
        self.initrd = self._initrd(gdir)
        # /share in every guest: logs and acknowledgements that must outlive a killed guest
        self.share = os.path.join(self.dir, "share")
        os.makedirs(self.share, exist_ok=True)
        if self._want_store:
            self.store = os.path.join(self.dir, "store")
            os.makedirs(self.store, exist_ok=True)
        self._alloc_ports()
        for i in range(1, self.n + 1):
            g = Guest(self, i)
            with open(g.disk, "wb") as fh:
                fh.truncate(parse_size(self.disk_size))
            self.guests[i] = g
        t = time.time()
        for g in self.guests.values():
            g.spawn()
        for g in self.guests.values():
            g.wait_ready(boot_timeout)
        self.boot_seconds = time.time() - t
        self.timeline.mark(f"{self.n} guests up in {self.boot_seconds:.1f}s (logs: {self.dir})")
        return self

    def g(self, i):
        if i not in self.guests:
            raise LabError(f"no guest {i} (lab has 1..{self.n})")
        return self.guests[i]

    def run(self, i, cmd, timeout=60):
        """Run a shell command in guest i: (rc, stdout). stderr is logged and kept in last_err."""
        rc, out, err = self.g(i).run(cmd, timeout)
        self.last_err = err
        return rc, out

    def run_full(self, i, cmd, timeout=60):
        """(rc, stdout, stderr)."""
        return self.g(i).run(cmd, timeout)

    def check(self, i, cmd, timeout=60):
        """Run and require exit code 0: returns stdout, raises LabError with stderr otherwise."""
        rc, out, err = self.g(i).run(cmd, timeout)
        if rc != 0:
            raise LabError(f"node{i}: `{cmd}` exited {rc}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
        return out

    def par(self, fn, nodes=None):
        """Call fn(i) for several guests at once (threads); returns {i: result}, re-raises the first error."""
        nodes = list(nodes or self.guests)
        res, errs = {}, []

        def one(i):
            try:
                res[i] = fn(i)
            except Exception as e:  # noqa: BLE001 - re-raised below
                errs.append(e)
        ts = [threading.Thread(target=one, args=(i,)) for i in nodes]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            raise errs[0]
        return res

    def wait_until(self, i, cmd, pred, timeout=60, every=0.5, what=None):
        """Run cmd in guest i until pred(stdout) is true; returns that stdout, raises LabError on timeout."""
        deadline = time.time() + timeout
        out = ""
        while True:
            rc, out = self.run(i, cmd, max(5, min(30, timeout)))
            if rc == 0 and pred(out):
                return out
            if time.time() > deadline:
                raise LabError(f"node{i}: timeout after {timeout}s waiting for {what or cmd}; last output:\n"
                               f"{out[-1500:]}")
            time.sleep(every)

    def write_file(self, i, path, data, mode=0o644):
        """Write a file in guest i (through the control channel)."""
        if isinstance(data, str):
            data = data.encode()
        b64 = base64.b64encode(data).decode()
        self.check(i, f"mkdir -p $(dirname {path}) && echo {b64} | base64 -d > {path} && chmod {mode:o} {path}")

    def kill(self, i):
        """Hard power-off: SIGKILL of the guest's qemu."""
        self.g(i).kill()

    def restart(self, i, boot_timeout=180):
        g = self.g(i)
        g.kill()
        g.spawn()
        g.wait_ready(boot_timeout)

    def stop(self):
        """Power off every guest. The disks are deleted (they are large) unless LAB_KEEP_DISKS=1;
        the logs and the store stay in the run's directory."""
        for g in self.guests.values():
            g.kill()
            g.ctl_log.close()
            for f in [g.sock] + ([] if os.environ.get("LAB_KEEP_DISKS") == "1" else [g.disk]):
                if os.path.exists(f):
                    os.unlink(f)
        # the run's initrd and overlay tree are rebuilt at every start: not worth keeping
        if os.path.exists(os.path.join(self.dir, "initrd.img")):
            os.unlink(os.path.join(self.dir, "initrd.img"))
        shutil.rmtree(os.path.join(self.dir, "overlay"), ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def prune_work(keep):
    """Old runs' directories (logs; disks are deleted at stop) beyond the newest `keep`."""
    if not os.path.isdir(WORK):
        return
    runs = sorted((e for e in os.scandir(WORK) if e.is_dir()), key=lambda e: e.stat().st_mtime, reverse=True)
    for e in runs[keep:]:
        shutil.rmtree(e.path, ignore_errors=True)


def parse_size(s):
    s = str(s)
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1].upper())
    return int(s[:-1]) * mult if mult else int(s)


def drbd9_files(gdir):
    """The DRBD 9 modules for the guest's kernel (tests/vm/build-drbd9.sh, cached), as extra files under
    /usr/lib/drbd9, which init.sh loads instead of the kernel's own drbd when booted with lab.drbd=9."""
    with open(os.path.join(gdir, "manifest.json")) as fh:
        kver = json.load(fh)["kernel"]
    p = subprocess.run([os.path.join(HERE, "build-drbd9.sh"), kver], stdout=subprocess.PIPE, text=True)
    if p.returncode == 77:
        raise LabSkip("no DRBD 9 source (../shared/third_party/drbd-9.*.tar.gz or DRBDPOOL_THIRD_PARTY)")
    if p.returncode != 0:
        raise LabError(f"build-drbd9.sh {kver} failed (exit {p.returncode})")
    mdir = p.stdout.strip().splitlines()[-1]
    return {f"/usr/lib/drbd9/{m}.ko": os.path.join(mdir, f"{m}.ko") for m in ("handshake", "drbd", "drbd_transport_tcp")}


def drbdpool_files():
    """The project's files for the guests: the drbdpool binary and the Perl shim (with its test stand-in
    of the PVE base under t/lib). The binary must be built on Debian 12 (same glibc as the guest)."""
    binp = os.environ.get("DRBDPOOL_BIN", os.path.join(REPO, "target", "release", "drbdpool"))
    if not os.path.isfile(binp):
        raise LabError(f"drbdpool binary not found at {binp}: build it first (cargo build --release) or set "
                       f"DRBDPOOL_BIN")
    shim = os.environ.get("DRBDPOOL_SHIM", os.path.join(REPO, "perl-shim"))
    if not os.path.isdir(shim):
        raise LabError(f"Perl shim directory not found at {shim}: set DRBDPOOL_SHIM")
    # /usr/bin/drbdpool: the shim's default helper path. boot.sh makes the 9p store the guest's /etc/pve
    # (the pmxcfs stand-in), so the store is at its production default /etc/pve/priv/drbdpool and the locks
    # at /etc/pve/priv/lock, shared by all guests: DRBD's handlers (fence-peer), which run with the
    # kernel's bare environment, find the same store as the agent and the plugin. It also writes
    # /etc/drbdpool.env (node name, shim path) for scenario commands to source.
    boot = """#!/bin/sh
mkdir -p /etc/pve && mount --bind /store /etc/pve && mkdir -p /etc/pve/priv/drbdpool /etc/pve/priv/lock
cat >/etc/drbdpool.env <<EOT
export DRBDPOOL_STORE=/etc/pve/priv/drbdpool
export DRBDPOOL_NODE=$(hostname)
export DRBDPOOL_BIN=/usr/bin/drbdpool
export DRBDPOOL_DRBD=real
export PERL5LIB=/opt/perl-shim:/opt/perl-shim/t/lib
EOT
"""
    return {"/usr/bin/drbdpool": binp, "/opt/perl-shim": shim, "/lab/boot.sh": boot.encode()}


if __name__ == "__main__":
    # Smoke test: boot N guests, show each one's view of itself and ping the others.
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with Lab(n) as lab:
        for i in range(1, n + 1):
            print(lab.check(i, "hostname; uname -r; ip -4 addr show | grep 10.99; cat /proc/drbd | head -1"))
            for j in range(1, n + 1):
                if j != i:
                    rc, out = lab.run(i, f"ping -c 1 -W 5 10.99.0.{j}", 20)
                    print(f"node{i} -> node{j}: rc={rc}")
