#!/usr/bin/env bash
# Installs what building and testing drbdpool needs on a fresh Debian 12 machine.
# Idempotent: a second run only checks. Needs root (apt-get).
set -euo pipefail

pkgs=(
  drbd-utils lvm2 thin-provisioning-tools   # the real tools: parser checks, LVM command shapes
  e2fsprogs util-linux iproute2             # mkfs.ext4 -O mmp, losetup, network namespaces for agents
  perl libjson-pp-perl libjson-xs-perl     # the Perl shim and its prove tests (XS decoder as on PVE nodes)
  qemu-system-x86 cpio busybox-static       # the real-kernel lab (tests/vm)
  dpkg-dev debhelper fakeroot lintian help2man       # building and checking the .deb
  strace                                    # scripts/bench.sh BENCH_PMXCFS=1: the store writes of one alloc
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
echo "install-deps: ok"
