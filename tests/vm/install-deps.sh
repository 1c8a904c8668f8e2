#!/bin/sh
# Host packages the real-kernel lab needs. Idempotent: installs only what is missing.
# The guest itself is built from Debian packages fetched with `apt-get download` (build-guest.py),
# so nothing of the guest depends on what the host has installed.
set -eu
need=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v dpkg-deb >/dev/null 2>&1 || need="$need dpkg"
command -v gzip >/dev/null 2>&1 || need="$need gzip"
if [ -n "$need" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run (a parallel job) may hold the lock: wait for it instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq || true
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $need
fi
qemu-system-x86_64 --version | head -1
