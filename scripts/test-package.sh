#!/usr/bin/env bash
# Builds the .deb with the standard Debian tools from a copy of this tree and
# checks what a Proxmox admin gets: file layout, dependencies, maintainer
# scripts that do nothing harmful on a machine without Proxmox, lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d /tmp/drbdpool-pkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
# A copy without build output; the cargo target dir is shared so deps are not rebuilt.
tar -C "$root" --exclude=./target --exclude=./tests/vm/cache --exclude=./tests/vm/work --exclude=./.git -cf - . | tar -C "$work/src" -xf -
(cd "$work/src" && CARGO_TARGET_DIR="$root/target" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log"; echo "FAIL: dpkg-buildpackage"; exit 1; }
deb=$(ls "$work"/drbdpool_*_*.deb)
echo "built $(basename "$deb")"

fail=0
check() { if "$@"; then echo "ok: ${desc}"; else echo "FAIL: ${desc}"; fail=1; fi; }
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/drbdpool ./usr/share/perl5/PVE/Storage/Custom/DRBDPoolPlugin.pm \
         ./usr/share/perl5/PVE/Storage/Custom/DRBDPool/Helper.pm \
         ./lib/systemd/system/drbdpool-agent.service ./usr/share/doc/drbdpool/examples/lvm-global-filter.conf; do
  desc="package contains $f"; check grep -q " $f\$" <<<"$contents"
done
desc="package contains the man page"; check grep -q " ./usr/share/man/man1/drbdpool.1.gz$" <<<"$contents"
desc="agent unit starts only on a Proxmox node"; check bash -c "dpkg-deb --fsys-tarfile '$deb' | tar -xOf - ./lib/systemd/system/drbdpool-agent.service | grep -q '^ConditionPathIsDirectory=/etc/pve/priv'"
desc="binary is executable"; check grep -qE '^-rwxr-xr-x .* \./usr/bin/drbdpool$' <<<"$contents"
deps=$(dpkg-deb -f "$deb" Depends)
for d in drbd-utils lvm2 thin-provisioning-tools; do desc="Depends: $d"; check grep -q "$d" <<<"$deps"; done

dpkg-deb -e "$deb" "$work/ctrl"
desc="postinst enables the agent unit (debhelper snippet)"; check grep -q 'drbdpool-agent.service' "$work/ctrl/postinst"
# Maintainer scripts, run in a private mount namespace where /run/systemd/system
# and the unit directory are ours: which PVE daemons are "installed" is up to the test.
mkdir -p "$work/bin"
for s in deb-systemd-helper deb-systemd-invoke systemctl; do
  printf '#!/bin/sh\necho "%s $*" >>"$CALL_LOG"\nexit 0\n' "$s" >"$work/bin/$s"; chmod +x "$work/bin/$s"
done
run_script() { # script arg units...
  local script=$1 arg=$2; shift 2
  : >"$work/log"
  CALL_LOG=$work/log PATH="$work/bin:$PATH" unshare -m --propagation private sh -c '
    mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system
    mount -t tmpfs tmpfs /lib/systemd/system
    [ -d /usr/lib/systemd/system ] && [ "$(readlink -f /lib)" != /usr/lib ] && mount -t tmpfs tmpfs /usr/lib/systemd/system
    for u in '"$*"'; do : >/lib/systemd/system/$u.service; done
    sh "$0" "$1"' "$script" "$arg"
}
run_script "$work/ctrl/postinst" configure
desc="postinst without Proxmox restarts no PVE daemon"; check bash -c "! grep -qE 'restart pve' '$work/log'"
run_script "$work/ctrl/postinst" configure pvedaemon pvestatd pve-ha-lrm
for u in pvedaemon pvestatd pve-ha-lrm; do desc="postinst restarts installed $u"; check grep -q "deb-systemd-invoke reload-or-try-restart $u.service" "$work/log"; done
desc="postinst leaves pveproxy alone when it is not installed"; check bash -c "! grep -q 'pveproxy' '$work/log'"
run_script "$work/ctrl/postrm" remove pvedaemon
desc="postrm restarts installed pvedaemon"; check grep -q "deb-systemd-invoke reload-or-try-restart pvedaemon.service" "$work/log"

# The packaged plugin compiles against the test stand-in of the PVE base.
desc="packaged plugin loads"; check bash -c "dpkg-deb -x '$deb' '$work/root' && perl -I'$work/root/usr/share/perl5' -I'$root/perl-shim/t/lib' -e 'use PVE::Storage::Custom::DRBDPoolPlugin; print \"loaded\n\"' >/dev/null"

echo "--- lintian"
lintian --no-tag-display-limit "$deb" 2>&1 | tee "$work/lintian.log" | head -30 || true
errors=$(grep -c '^E:' "$work/lintian.log" || true)
desc="lintian reports no errors ($errors)"; check [ "$errors" -eq 0 ]
exit $fail
