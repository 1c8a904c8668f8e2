#!/usr/bin/env bash
# The DRBD 9 flavour of the lab: build drbd.ko, drbd_transport_tcp.ko and handshake.ko for the guest's
# kernel from the DRBD source in ../shared/third_party (or DRBDPOOL_THIRD_PARTY), cached by (kernel
# release, DRBD version) like the guest image. Recipe and timings: ../shared/third_party/README.md.
#
#   tests/vm/build-drbd9.sh <kernel release>     # e.g. 6.1.0-57-amd64; prints the module directory
#
# Exit 77 (skip) when the DRBD source is not there; installs linux-headers-<release>, coccinelle and
# build-essential with apt-get when missing (root). 6.1 lacks the kernel's TLS handshake code, so DRBD
# carries its own (handshake.ko) and the TCP transport links against it: all three are loaded, in order
# handshake, drbd, drbd_transport_tcp.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rel=${1:?usage: build-drbd9.sh <kernel release>}
tp=${DRBDPOOL_THIRD_PARTY:-$here/../../../shared/third_party}
tarball=$(ls "$tp"/drbd-9.*.tar.gz 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$tarball" ]; then
    echo "build-drbd9: no drbd-9.*.tar.gz in $tp (set DRBDPOOL_THIRD_PARTY): the DRBD 9 lab flavour is skipped" >&2
    exit 77
fi
ver=$(basename "$tarball" .tar.gz)
out=$here/cache/$ver-$rel
if [ -f "$out/ok" ]; then
    echo "$out"
    exit 0
fi
need=()
for p in "linux-headers-$rel" coccinelle build-essential; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    echo "build-drbd9: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    }
fi
mkdir -p "$here/cache"
work=$(mktemp -d "$here/cache/.build-$ver.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
t0=$(date +%s)
# SPAAS=false: no online spatch service (no network); coccinelle runs here.
make -C "$src/drbd" -j"$(nproc)" KDIR="/usr/src/linux-headers-$rel" SPAAS=false >"$work/build.log" 2>&1 || {
    tail -30 "$work/build.log" >&2
    echo "build-drbd9: make failed (log above)" >&2
    exit 1
}
b="$src/drbd/build-$rel"
[ -d "$b" ] || b="$src/drbd"
mkdir -p "$out.tmp"
for m in drbd.ko drbd_transport_tcp.ko drbd-kernel-compat/handshake/handshake.ko; do
    f=$(find "$b" -path "*/$m" -o -name "$(basename "$m")" -path "*$(dirname "$m" | sed 's/^\.$//')*" 2>/dev/null | grep "$(basename "$m")$" | head -1)
    [ -n "$f" ] || { echo "build-drbd9: $m not found under $b" >&2; exit 1; }
    cp "$f" "$out.tmp/"
done
echo "$ver for $rel, built in $(( $(date +%s) - t0 )) s" >"$out.tmp/ok"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "build-drbd9: $(cat "$out/ok")" >&2
echo "$out"
