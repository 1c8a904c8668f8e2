#!/usr/bin/env python3
"""Build the lab guest: Debian 12's stock kernel + an initramfs made only from Debian 12 packages.

The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`, so the guest does not
depend on what the host has installed. The result is cached under tests/vm/cache/guest-<key>/, where the key
hashes the exact package file names (name_version_arch) and this script plus init.sh: a second run only asks
apt for the current versions and reuses the cache in seconds.

Output (printed as the last line, and in guest-<key>/manifest.json):
  vmlinuz         Debian's kernel, booted with -kernel
  guest.cpio.gz   the whole guest file system (busybox init, DRBD 8.4 module, LVM thin, perl, ...)
The project's own files (drbdpool binary, Perl shim) are NOT in here: lab.py appends them at run time as a
second small cpio (the kernel unpacks concatenated archives), so rebuilding the project never rebuilds this.

Usage: build-guest.py [--force] [--print-dir]
"""
import argparse
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
DEBS = os.path.join(CACHE, "debs")

# Packages whose files go into the guest in full (minus docs). Their library dependencies (lib*) are added
# by resolve_closure(); the kernel package is handled separately (only vmlinuz and selected modules).
WANTED = [
    "busybox-static",        # init, shell and the small tools
    "drbd-utils",            # drbdadm/drbdsetup/drbdmeta (with the 8.4 variants in /lib/drbd)
    "lvm2", "dmsetup", "thin-provisioning-tools",
    "e2fsprogs",             # mkfs.ext4 (with -O mmp), e2fsck
    "util-linux", "mount",   # blockdev, losetup, mount, blkid, fsck
    "coreutils",             # real sha256sum, dd, sync with the usual options
    "perl-base", "perl-modules-5.36", "libperl5.36",  # perl + JSON::PP and the core XS modules
    "libgcc-s1", "libc6",    # what a Rust binary built on Debian 12 links against
    "zlib1g",                # perl's Compress::Raw::Zlib
]
KERNEL_META = "linux-image-amd64"

# Kernel modules to load at boot, in this order after their dependencies (modinfo depends=).
# Missing names are fine when the feature is built in (checked against modules.builtin).
MODULES = [
    "virtio", "virtio_ring", "virtio_pci", "virtio_blk", "virtio_net",
    "9pnet", "9pnet_virtio", "9p",
    "loop",
    "crc32c_generic", "crc16", "ext4",
    "sha256_generic", "hmac",            # DRBD cram-hmac-alg sha256 (replication link authentication)
    "lru_cache", "libcrc32c", "drbd",
    "dm_mod", "dm_bufio", "dm_bio_prison", "dm_persistent_data", "dm_thin_pool",
    "dm_snapshot",                       # lvcreate -s of a thin LV (linked clones) checks for its target
]
REQUIRED_MODULES = {"virtio_blk", "virtio_net", "9p", "9pnet_virtio", "loop", "ext4", "drbd", "dm_mod",
                    "dm_thin_pool"}

DROP_PREFIXES = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/",
                 "usr/share/lintian/", "usr/share/bug/", "usr/share/bash-completion/", "etc/init.d/",
                 "lib/systemd/", "usr/lib/systemd/", "etc/systemd/", "usr/share/perl/5.36/pod/",
                 "usr/share/zsh/", "etc/cron", "usr/share/initramfs-tools/", "etc/logrotate.d/",
                 "usr/lib/x86_64-linux-gnu/gconv/", "lib/x86_64-linux-gnu/gconv/", "usr/share/i18n/",
                 "sbin/fsck.cramfs", "sbin/mkfs.cramfs",
                 # perl parts a JSON-speaking plugin never needs (C headers, CJK encodings, collation)
                 "usr/lib/x86_64-linux-gnu/perl/5.36.0/CORE/", "usr/bin/perl5.36.0",
                 "usr/lib/x86_64-linux-gnu/perl/5.36.0/auto/Encode/JP/",
                 "usr/lib/x86_64-linux-gnu/perl/5.36.0/auto/Encode/KR/",
                 "usr/lib/x86_64-linux-gnu/perl/5.36.0/auto/Encode/CN/",
                 "usr/lib/x86_64-linux-gnu/perl/5.36.0/auto/Encode/TW/",
                 "usr/share/perl/5.36.0/Unicode/Collate/")
DROP_SUFFIXES = (".pod", ".h")


def log(msg):
    print(f"[build-guest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


# ---------------------------------------------------------------- package resolution

def depends_of(pkgs):
    """{pkg: [first alternative of each Depends/Pre-Depends]} from apt-cache (no recommends)."""
    out = sh(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
              "--no-replaces", "--no-enhances"] + sorted(pkgs))
    deps, cur, in_or, pending_virtual = {}, None, False, None
    for line in out.splitlines():
        if not line.startswith(" "):
            cur = line.strip()
            deps.setdefault(cur, [])
            in_or = False
            pending_virtual = None
            continue
        m = re.match(r"^ (\||\s)(Pre)?Depends: (.+)$", line)
        if m:
            name = m.group(3).strip()
            take = not in_or          # only the first alternative of an OR group
            in_or = m.group(1) == "|"
            pending_virtual = None
            if take:
                if name.startswith("<"):
                    pending_virtual = True   # a virtual package: take its first provider (next line)
                else:
                    deps[cur].append(name)
            continue
        if pending_virtual and line.startswith("    "):
            deps[cur].append(line.strip())
            pending_virtual = None
    return deps


def kernel_package():
    try:
        kdeps = depends_of([KERNEL_META]).get(KERNEL_META, [])
    except subprocess.CalledProcessError:
        kdeps = []
    return next((d for d in kdeps if d.startswith("linux-image-")), None)


def resolve_closure():
    kernel_pkg = kernel_package()
    if kernel_pkg is None:
        # a fresh machine may have no package lists yet
        log("apt knows no linux-image-amd64: running apt-get update once")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], check=False)
        kernel_pkg = kernel_package()
    if kernel_pkg is None:
        raise SystemExit("apt cannot resolve linux-image-amd64: this must run on Debian 12 with its main "
                         "archive in the apt sources")
    full = set(WANTED)
    seen, todo = set(), set(WANTED)
    while todo:
        d = depends_of(todo)
        seen |= todo
        nxt = set()
        for p, ds in d.items():
            for dep in ds:
                dep = dep.split(":")[0]
                # follow libraries only: the tools' other dependencies (debconf, init scripts, ...) are
                # not needed in a guest without an init system
                if dep.startswith("lib") or dep.startswith("perl-modules") or dep in WANTED:
                    full.add(dep)
                    if dep not in seen:
                        nxt.add(dep)
        todo = nxt
    return kernel_pkg, sorted(full)


def deb_files(pkgs):
    """[(url, filename)] apt would download for these packages (current candidate versions)."""
    out = sh(["apt-get", "download", "--print-uris"] + pkgs)
    res = []
    for line in out.splitlines():
        m = re.match(r"^'([^']+)' (\S+) ", line)
        if m:
            res.append((m.group(1), m.group(2)))
    if len(res) != len(pkgs):
        raise SystemExit(f"apt-get download --print-uris returned {len(res)} files for {len(pkgs)} packages")
    return res


def download(files):
    os.makedirs(DEBS, exist_ok=True)
    missing = [f for _, f in files if not os.path.exists(os.path.join(DEBS, f))]
    if missing:
        # package=version spelled from the file name (name_version_arch.deb, ':' escaped as %3a)
        specs = []
        for f in missing:
            name, ver, _ = f[:-4].split("_")
            specs.append(f"{name}={ver.replace('%3a', ':')}")
        log(f"apt-get download {len(specs)} packages")
        subprocess.run(["apt-get", "download", "-q"] + specs, cwd=DEBS, check=True,
                       stdout=subprocess.DEVNULL)
    return [os.path.join(DEBS, f) for _, f in files]


# ---------------------------------------------------------------- tree assembly

def merged(rel):
    """Debian 12 packages still ship /bin, /sbin, /lib: the guest is merged-/usr like an installed system."""
    for top in ("bin/", "sbin/", "lib/", "lib64/"):
        if rel.startswith(top):
            return "usr/" + rel
    return rel


def copy_tree(src, dst, keep=lambda rel: True):
    for root, dirs, files in os.walk(src):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, src)
            if os.path.isdir(p) and not os.path.islink(p):
                continue
            if rel.startswith(DROP_PREFIXES) or rel.endswith(DROP_SUFFIXES) or not keep(rel):
                continue
            out = os.path.join(dst, merged(rel))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if os.path.lexists(out):
                os.unlink(out)
            if os.path.islink(p):
                os.symlink(os.readlink(p), out)
            else:
                shutil.copy2(p, out)


def modinfo_depends(path):
    data = open(path, "rb").read()
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    soft = re.findall(rb"(?:^|\x00)softdep=pre: ([^\x00]*)\x00", data)
    deps = [d for d in (m.group(1).decode().split(",") if m else []) if d]
    for s in soft:
        deps += [d for d in s.decode().split() if d]
    return [d.replace("-", "_") for d in deps]


def add_modules(kroot, root):
    mdir = os.path.join(kroot, "lib", "modules")
    kver = os.listdir(mdir)[0]
    base = os.path.join(mdir, kver)
    index = {}
    for r, _, files in os.walk(os.path.join(base, "kernel")):
        for f in files:
            m = re.match(r"^(.*)\.ko(\.xz)?$", f)
            if m:
                index[m.group(1).replace("-", "_")] = os.path.join(r, f)
    builtin = set()
    with open(os.path.join(base, "modules.builtin")) as fh:
        for line in fh:
            builtin.add(os.path.basename(line.strip())[:-3].replace("-", "_"))
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in REQUIRED_MODULES and name not in builtin:
                raise SystemExit(f"kernel {kver}: required module {name} is neither a module nor built in")
            return
        for d in modinfo_depends(index[name]):
            visit(d)
        order.append(name)

    for name in MODULES:
        visit(name)
    outdir = os.path.join(root, "usr/lib/modules", kver)
    os.makedirs(outdir, exist_ok=True)
    for name in order:
        src = index[name]
        dst = os.path.join(outdir, name + ".ko")
        data = open(src, "rb").read()
        if src.endswith(".xz"):
            data = lzma.decompress(data)     # busybox insmod loads plain .ko
        open(dst, "wb").write(data)
    with open(os.path.join(root, "etc/lab-modules"), "w") as fh:
        fh.write("".join(f"/lib/modules/{kver}/{n}.ko\n" for n in order))
    shutil.copy(os.path.join(base, "modules.builtin"), outdir)
    vmlinuz = os.path.join(kroot, "boot", f"vmlinuz-{kver}")
    return kver, order, vmlinuz


# ---------------------------------------------------------------- ELF check (stdlib only)

def elf_needed(path):
    """DT_NEEDED names of a 64-bit little-endian ELF file, or None if it is not one."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dyn = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data,
                                                                               phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        return []

    def v2o(addr):
        for va, off, sz in loads:
            if va <= addr < va + sz:
                return off + addr - va
        return None

    needed, strtab = [], None
    for i in range(dyn[1] // 16):
        tag, val = struct.unpack_from("<qQ", data, dyn[0] + i * 16)
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:
            strtab = v2o(val)
    if strtab is None:
        return []
    names = []
    for off in needed:
        end = data.index(b"\x00", strtab + off)
        names.append(data[strtab + off:end].decode())
    return names


LIBDIRS = ["usr/lib/x86_64-linux-gnu", "usr/lib", "usr/lib64"]


def check_libraries(root, extra_files=()):
    """Every DT_NEEDED of every ELF file in the guest must be in the guest: returns the missing ones."""
    missing = {}
    paths = list(extra_files)
    for r, _, files in os.walk(root):
        for f in files:
            paths.append(os.path.join(r, f))
    for p in paths:
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        try:
            needed = elf_needed(p)
        except (struct.error, ValueError, OSError):
            continue
        for n in needed or []:
            if not any(os.path.lexists(os.path.join(root, d, n)) for d in LIBDIRS):
                missing.setdefault(n, []).append(os.path.relpath(p, root))
    return missing


# ---------------------------------------------------------------- cpio (newc), stdlib only

def cpio_entries(root):
    """(archive name, absolute path) for a tree, directories first so the kernel can create them."""
    out = []
    for r, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(r, root)
        if rel != ".":
            out.append((rel, r))
        for f in sorted(files):
            out.append((os.path.normpath(os.path.join(rel, f)), os.path.join(r, f)))
        for d in dirs:               # symlinked directories are listed by os.walk as dirs
            p = os.path.join(r, d)
            if os.path.islink(p):
                out.append((os.path.normpath(os.path.join(rel, d)), p))
    return out


def write_cpio(fh, entries):
    """Write a newc archive of [(name, path)] with uid/gid 0 (no fakeroot needed)."""
    ino = 1
    for name, path in entries:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            body = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                body = f.read()
        else:
            body = b""
        _cpio_record(fh, name, st.st_mode, len(body), body, ino, int(st.st_mtime))
        ino += 1
    _cpio_record(fh, "TRAILER!!!", 0, 0, b"", 0, 0)


def _cpio_record(fh, name, mode, size, body, ino, mtime):
    nb = name.encode() + b"\x00"
    hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, mtime, size, 0, 0, 0, 0, len(nb), 0))
    fh.write(hdr.encode() + nb)
    fh.write(b"\x00" * ((4 - (110 + len(nb)) % 4) % 4))
    fh.write(body)
    fh.write(b"\x00" * ((4 - size % 4) % 4))


# ---------------------------------------------------------------- main

def build(force=False):
    os.makedirs(CACHE, exist_ok=True)
    t0 = time.time()
    kernel_pkg, pkgs = resolve_closure()
    files = deb_files([kernel_pkg] + pkgs)
    h = hashlib.sha256()
    for _, f in sorted(files, key=lambda x: x[1]):
        h.update(f.encode() + b"\n")
    for own in ("build-guest.py", "init.sh"):
        h.update(open(os.path.join(HERE, own), "rb").read())
    key = h.hexdigest()[:16]
    out = os.path.join(CACHE, f"guest-{key}")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest) and not force:
        log(f"cached guest {out} ({time.time() - t0:.1f}s)")
        return out
    debs = download(files)
    # apt lists the files in its own order: pick the kernel by name
    kdeb = next(d for d in debs if os.path.basename(d).startswith(kernel_pkg + "_"))
    debs = [d for d in debs if d != kdeb]
    work = tempfile.mkdtemp(prefix="guest-", dir=CACHE)
    try:
        root = os.path.join(work, "root")
        for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc/lvm", "dev", "proc", "sys", "run",
                  "tmp", "store", "var/lock", "var/run", "var/lib/drbd", "root", "mnt"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for top in ("bin", "sbin", "lib", "lib64"):
            os.symlink(f"usr/{top}", os.path.join(root, top))
        for deb in debs:
            x = os.path.join(work, "x", os.path.basename(deb))
            os.makedirs(x)
            subprocess.run(["dpkg-deb", "-x", deb, x], check=True)
            copy_tree(x, root)
        kx = os.path.join(work, "kernel")
        subprocess.run(["dpkg-deb", "-x", kdeb, kx], check=True)
        kver, modules, vmlinuz = add_modules(kx, root)
        # /bin/sh for scripts and perl's system(): busybox's shell (Debian's dash is not needed)
        if not os.path.lexists(os.path.join(root, "usr/bin/sh")):
            os.symlink("busybox", os.path.join(root, "usr/bin/sh"))
        shutil.copy(os.path.join(HERE, "init.sh"), os.path.join(root, "init"))
        os.chmod(os.path.join(root, "init"), 0o755)
        with open(os.path.join(root, "etc/lvm/lvm.conf"), "w") as fh:
            # no udev in the guest; LVM never scans DRBD devices (design invariant 6)
            fh.write("devices {\n  obtain_device_list_from_udev = 0\n  external_device_info_source = \"none\"\n"
                     "  filter = [ \"r|^/dev/drbd|\", \"a|.*|\" ]\n}\n"
                     "activation {\n  udev_sync = 0\n  udev_rules = 0\n  monitoring = 0\n}\n"
                     "global {\n  use_lvmpolld = 0\n}\n")
        for f, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n"),
                        ("etc/hosts", "127.0.0.1 localhost\n")):
            with open(os.path.join(root, f), "w") as fh:
                fh.write(text)
        missing = check_libraries(root)
        if missing:
            raise SystemExit("guest lacks shared libraries: " +
                             "; ".join(f"{k} (for {v[0]})" for k, v in sorted(missing.items())))
        libs = sorted(os.listdir(os.path.join(root, "usr/lib/x86_64-linux-gnu")))
        os.makedirs(out, exist_ok=True)
        cpio_path = os.path.join(out, "guest.cpio.gz")
        with gzip.open(cpio_path + ".tmp", "wb", compresslevel=6) as fh:
            write_cpio(fh, cpio_entries(root))
        os.rename(cpio_path + ".tmp", cpio_path)
        shutil.copy(vmlinuz, os.path.join(out, "vmlinuz"))
        with open(manifest + ".tmp", "w") as fh:
            json.dump({"key": key, "kernel": kver, "kernel_package": kernel_pkg,
                       "packages": [f for _, f in files], "modules": modules, "libs": libs,
                       "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "build_seconds": round(time.time() - t0, 1)}, fh, indent=1)
        os.rename(manifest + ".tmp", manifest)
        size = os.path.getsize(cpio_path)
        for old in os.listdir(CACHE):     # keep one guest: the cache is keyed, not a history
            if old.startswith("guest-") and old != os.path.basename(out):
                shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
        log(f"built {out}: kernel {kver}, {len(modules)} modules, {len(files)} packages, "
            f"initramfs {size / 1e6:.1f} MB, {time.time() - t0:.1f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache matches")
    args = ap.parse_args()
    print(build(force=args.force))


if __name__ == "__main__":
    main()
