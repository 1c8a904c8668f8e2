#!/usr/bin/env bash
# Tier "ha" (issue 15): the real Proxmox HA manager's logic on the rules drbdpool writes.
#
# Unpacks pve-ha-manager, pve-common, pve-cluster and pve-apiclient from the third-party folder
# (${DRBDPOOL_THIRD_PARTY:-<repo>/../shared/third_party}, see its README.md) into a cache outside the
# repository, installs the Debian Perl packages they load, and runs tests/ha/t with prove. The tests put
# the unpacked PVE::HA::Rules, PVE::HA::Sim::*, PVE::API2::HA::Rules and PVE::CLI::ha_manager on @INC;
# only pmxcfs (PVE::Cluster) and pve-access-control (PVE::RPCEnvironment) are stood in (tests/ha/lib).
# Without the third-party folder the tier is skipped (CI=true: it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tp=${DRBDPOOL_THIRD_PARTY:-$root/../shared/third_party}
tarballs=(pve-ha-manager-5.2.0 pve-common-9.2.1 pve-cluster-9.1.6 pve-apiclient-3.4.2)

missing=()
for t in "${tarballs[@]}"; do [ -f "$tp/$t.tar.gz" ] || missing+=("$t.tar.gz"); done
if ((${#missing[@]})); then
  msg="ha tier: ${missing[*]} not found in $tp (set DRBDPOOL_THIRD_PARTY to a folder holding them)"
  if [ "${CI:-}" = true ]; then echo "FAIL: $msg" >&2; exit 1; fi
  echo "SKIP: $msg"; exit 0
fi

cache=${DRBDPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/drbdpool}/third_party
mkdir -p "$cache"
for t in "${tarballs[@]}"; do
  sum=$(sha256sum "$tp/$t.tar.gz" | cut -d' ' -f1)
  if [ "$(cat "$cache/$t.sha256" 2>/dev/null)" != "$sum" ]; then
    rm -rf "${cache:?}/$t"
    tar -xzf "$tp/$t.tar.gz" -C "$cache" || { echo "ha tier: cannot unpack $tp/$t.tar.gz into $cache" >&2; exit 1; }
    [ -d "$cache/$t/src" ] || { echo "ha tier: $t.tar.gz did not unpack to $cache/$t/src" >&2; exit 1; }
    echo "$sum" > "$cache/$t.sha256"
  fi
done

# The Debian packages of what the modules used here load (listed from %INC of the CLI and of the
# simulator, each file's package by dpkg -S).
pkgs=(perl libanyevent-perl libclone-perl libdevel-cycle-perl libencode-locale-perl libfilesys-df-perl
      libhttp-message-perl libio-socket-ip-perl libjson-perl libjson-xs-perl liblinux-inotify2-perl libnet-ip-perl
      libstring-shellquote-perl libtimedate-perl liburi-perl libyaml-libyaml-perl)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
  echo "ha tier: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "${DRBDPOOL_BIN:-}" ]; then
  cargo build --release --locked --bin drbdpool 2>&1 | tail -3
  export DRBDPOOL_BIN=$root/target/release/drbdpool
fi
[ -x "$DRBDPOOL_BIN" ] || { echo "ha tier: drbdpool binary $DRBDPOOL_BIN not found" >&2; exit 1; }

export DRBDPOOL_PVE_HA_SRC=$cache/pve-ha-manager-5.2.0/src
export PERL5LIB=$root/tests/ha/lib:$DRBDPOOL_PVE_HA_SRC:$cache/pve-common-9.2.1/src:$cache/pve-cluster-9.1.6/src:$cache/pve-apiclient-3.4.2/src${PERL5LIB:+:$PERL5LIB}
files=(tests/ha/t)
for a in "$@"; do [[ $a == -* ]] || files=(); done   # test files given: run only those
start=$(date +%s)
set +e
prove "$@" "${files[@]}"
rc=$?
echo "ha tier: $(( $(date +%s) - start )) s"
exit $rc
