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
(cd "$work/src" && CARGO_TARGET_DIR="$root/target/pkg" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log"; echo "FAIL: dpkg-buildpackage"; exit 1; }
deb=$(ls "$work"/drbdpool_*_*.deb)
echo "built $(basename "$deb")"

fail=0
check() { if "$@"; then echo "ok: ${desc}"; else echo "FAIL: ${desc}"; fail=1; fi; }
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/drbdpool ./usr/share/perl5/PVE/Storage/Custom/DRBDPoolPlugin.pm \
         ./lib/systemd/system/drbdpool-agent.service ./usr/share/doc/drbdpool/examples/lvm-global-filter.conf; do
  desc="package contains $f"; check grep -q " $f\$" <<<"$contents"
done
desc="binary is executable"; check grep -qE '^-rwxr-xr-x .* \./usr/bin/drbdpool$' <<<"$contents"
deps=$(dpkg-deb -f "$deb" Depends)
for d in drbd-utils lvm2 thin-provisioning-tools; do desc="Depends: $d"; check grep -q "$d" <<<"$deps"; done

# Maintainer scripts: extract and run them against a recording systemctl.
dpkg-deb -e "$deb" "$work/ctrl"
desc="postinst enables the agent unit (debhelper snippet)"; check grep -q 'drbdpool-agent.service' "$work/ctrl/postinst"
mkdir -p "$work/bin"
cat >"$work/bin/systemctl" <<'SH'
#!/bin/sh
echo "systemctl $*" >>"$SYSTEMCTL_LOG"
case "$1" in is-active) [ -n "$PVE_ACTIVE" ] && echo " $PVE_ACTIVE " | grep -q " ${3%.service} " && exit 0; exit 3;; esac
exit 0
SH
chmod +x "$work/bin/systemctl"
for s in deb-systemd-helper deb-systemd-invoke; do printf '#!/bin/sh\necho "%s $*" >>"$SYSTEMCTL_LOG"\nexit 0\n' "$s" >"$work/bin/$s"; chmod +x "$work/bin/$s"; done
# Without Proxmox: no PVE daemon is restarted.
: >"$work/log"
SYSTEMCTL_LOG=$work/log PVE_ACTIVE="" PATH="$work/bin:$PATH" sh "$work/ctrl/postinst" configure
desc="postinst without Proxmox restarts no PVE daemon"; check bash -c "! grep -qE 'restart.*pve' '$work/log'"
# With Proxmox daemons running: each running one is restarted, others are not.
: >"$work/log"
SYSTEMCTL_LOG=$work/log PVE_ACTIVE="pvedaemon pvestatd pve-ha-lrm" PATH="$work/bin:$PATH" sh "$work/ctrl/postinst" configure
for u in pvedaemon pvestatd pve-ha-lrm; do desc="postinst restarts running $u"; check grep -q "try-reload-or-restart $u.service" "$work/log"; done
desc="postinst leaves stopped pveproxy alone"; check bash -c "! grep -q 'restart pveproxy' '$work/log'"
: >"$work/log"
SYSTEMCTL_LOG=$work/log PVE_ACTIVE="pvedaemon" PATH="$work/bin:$PATH" sh "$work/ctrl/postrm" remove
desc="postrm restarts running pvedaemon"; check grep -q "try-reload-or-restart pvedaemon.service" "$work/log"

# The packaged plugin compiles against the test stand-in of the PVE base.
desc="packaged plugin loads"; check bash -c "dpkg-deb -x '$deb' '$work/root' && perl -I'$work/root/usr/share/perl5' -I'$root/perl-shim/t/lib' -e 'use PVE::Storage::Custom::DRBDPoolPlugin; print \"loaded\n\"' >/dev/null"

echo "--- lintian"
lintian --no-tag-display-limit "$deb" 2>&1 | tee "$work/lintian.log" | head -30 || true
errors=$(grep -c '^E:' "$work/lintian.log" || true)
desc="lintian reports no errors ($errors)"; check [ "$errors" -eq 0 ]
exit $fail
