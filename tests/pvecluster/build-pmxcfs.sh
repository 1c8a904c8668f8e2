#!/usr/bin/env bash
# Builds pmxcfs (the Proxmox cluster file system) from the pve-cluster 8.1.3 source snapshot for the
# tier-4 cluster harness (tests/pvecluster/mod.rs), and installs the Debian packages it and the
# harness need (corosync, corosync-qdevice, corosync-qnetd, fuse, the -dev packages pmxcfs links to).
#
# Source: ${DRBDPOOL_THIRD_PARTY:-<repo>/../shared/third_party}/pve-cluster-8.1.3.tar.gz, never copied
# into the repository. The binary is cached outside git under tests/pvecluster/work/ (in .gitignore),
# keyed by the tarball's sha256: a second run only checks.
#
# Prints the path of the pmxcfs binary as its last line on stdout.
# Exit codes: 0 built or cached; 77 the tier must be skipped (source or root missing; never with
# CI=true, where that is a failure: exit 1); 1 an error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tp=${DRBDPOOL_THIRD_PARTY:-$repo/../shared/third_party}
if [ -z "${DRBDPOOL_THIRD_PARTY:-}" ] && [ ! -d "$tp" ]; then
  # A git worktree: ../shared beside the main checkout.
  common=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  [ -n "$common" ] && [ -d "$(dirname "$common")/../shared/third_party" ] && tp=$(dirname "$common")/../shared/third_party
fi
tarball=$tp/pve-cluster-8.1.3.tar.gz
cache=${DRBDPOOL_PVECLUSTER_WORK:-$here/work}

skip() {
  if [ "${CI:-}" = true ]; then echo "build-pmxcfs: $* (CI=true: this is a failure)" >&2; exit 1; fi
  echo "build-pmxcfs: SKIP tier 4 on pmxcfs: $*" >&2; exit 77
}

[ -f "$tarball" ] || skip "$tarball not found (set DRBDPOOL_THIRD_PARTY to a folder holding pve-cluster-8.1.3.tar.gz, proxmox/pve-cluster stable-bookworm e18c792)"
[ "$(id -u)" = 0 ] || skip "needs root (network, mount and UTS namespaces, FUSE, apt-get)"

# Packages: pmxcfs's build dependencies (../shared/third_party/README.md), what runs the cluster,
# and what the harness itself calls (ip, nsenter/unshare, certutil via the qdevice tools).
pkgs=(build-essential pkg-config libcorosync-common-dev libcpg-dev libquorum-dev libcmap-dev libqb-dev
      libfuse-dev libsqlite3-dev libglib2.0-dev librrd-dev
      corosync corosync-qdevice corosync-qnetd fuse libnss3-tools iproute2 util-linux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "build-pmxcfs: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  # policy-rc.d 101: no package may start its service on this build machine (corosync, qnetd).
  prc=/usr/sbin/policy-rc.d; made_prc=
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc; chmod +x $prc; made_prc=1; fi
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2 || { [ -n "$made_prc" ] && rm -f $prc; exit 1; }
  [ -n "$made_prc" ] && rm -f $prc
fi
getent group www-data >/dev/null || groupadd --system www-data # pmxcfs gives /etc/pve to group www-data

sum=$(sha256sum "$tarball" | cut -c1-16)
out=$cache/pmxcfs-$sum
if [ -x "$out/pmxcfs" ]; then echo "$out/pmxcfs"; exit 0; fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s.%N)
tar -xzf "$tarball" -C "$tmp"
src=$(find "$tmp" -maxdepth 3 -type d -path '*/src/pmxcfs' | head -1)
[ -n "$src" ] || { echo "build-pmxcfs: no src/pmxcfs in $tarball" >&2; exit 1; }
make -C "$src" -j2 pmxcfs >"$tmp/build.log" 2>&1 || { tail -30 "$tmp/build.log" >&2; echo "build-pmxcfs: make failed" >&2; exit 1; }
mkdir -p "$out.tmp"
cp "$src/pmxcfs" "$out.tmp/pmxcfs"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "build-pmxcfs: built $out/pmxcfs in $(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo '?') s" >&2
echo "$out/pmxcfs"
