#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds the
# release binary, then runs every tier (docs/ARCHITECTURE.md "Testing tiers"):
#   1-4  cargo test   unit, command sequences, real drbd-utils parser, loop devices + agents in netns
#   6    prove        the Perl shim against a stand-in PVE base and the real binary
#   ha   prove        the real Proxmox HA manager (rules checker, CLI, CRM/LRM simulator) on drbdpool's
#                     rules (scripts/test-ha.sh; needs ../shared/third_party or DRBDPOOL_THIRD_PARTY)
#   5    tests/vm     real kernel: qemu guests with DRBD 8.4 (and 9.2, built from ../shared) + LVM thin (skip with DRBDPOOL_SKIP_LAB=1)
#   -    package      builds the .deb and inspects it
# Ends with one line "summary: N passed, M failed" (counts of individual tests).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "$0: run as root (loop devices, namespaces, qemu): on a Proxmox node you are root already; elsewhere su - or sudo" >&2
  exit 2
fi
root=$PWD
logdir=$(mktemp -d /tmp/drbdpool-test.XXXXXX)
passed=0; failed=0; stage_fail=()

stage() { echo; echo "=== $* ==="; }
note_fail() { stage_fail+=("$1"); }

stage "install dependencies"
bash scripts/install-deps.sh || { echo "install-deps failed"; exit 1; }

stage "build (release)"
cargo build --release --locked 2>&1 | tail -3
[ -x target/release/drbdpool ] || { echo "build failed"; exit 1; }
export DRBDPOOL_BIN=$root/target/release/drbdpool

stage "cargo test (tiers 1-4)"
cargo test --locked 2>&1 | tee "$logdir/cargo.log" | grep -E '^(test result|running|test .*FAILED|failures:|---- )' 
p=$(grep -Eo '[0-9]+ passed' "$logdir/cargo.log" | awk '{s+=$1} END {print s+0}')
f=$(grep -Eo '[0-9]+ failed' "$logdir/cargo.log" | awk '{s+=$1} END {print s+0}')
passed=$((passed + p)); failed=$((failed + f))
grep -q '^error' "$logdir/cargo.log" && { failed=$((failed + 1)); note_fail "cargo test (build error)"; }
[ "$f" -gt 0 ] && note_fail "cargo test"

if [ -d perl-shim/t ]; then
  stage "prove (tier 6: the Perl shim)"
  prove -T -I perl-shim -I perl-shim/t/lib perl-shim/t 2>&1 | tee "$logdir/prove.log" | tail -25
  p=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$logdir/prove.log" | tail -1)
  f=$(grep -Eo 'Failed [0-9]+/[0-9]+ subtests' "$logdir/prove.log" | awk '{split($2,a,"/"); s+=a[1]} END {print s+0}')
  if grep -q '^Result: PASS' "$logdir/prove.log"; then passed=$((passed + ${p:-0})); else
    failed=$((failed + (f > 0 ? f : 1))); passed=$((passed + ${p:-0} - f)); note_fail "prove"; fi
fi

if [ -x scripts/test-ha.sh ]; then
  stage "HA manager tier (the real PVE::HA logic on drbdpool's rules)"
  scripts/test-ha.sh 2>&1 | grep -v 'is experimental' | tee "$logdir/ha.log" | tail -25
  p=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$logdir/ha.log" | tail -1)
  f=$(grep -Eo 'Failed [0-9]+/[0-9]+ subtests' "$logdir/ha.log" | awk '{split($2,a,"/"); s+=a[1]} END {print s+0}')
  if grep -q '^Result: PASS' "$logdir/ha.log"; then passed=$((passed + ${p:-0}))
  elif grep -q '^SKIP: ha tier' "$logdir/ha.log"; then :
  else failed=$((failed + (f > 0 ? f : 1))); passed=$((passed + ${p:-0} - f)); note_fail "ha"; fi
fi

if [ -x tests/vm/run.sh ] && [ "${DRBDPOOL_SKIP_LAB:-0}" != 1 ]; then
  stage "real-kernel lab (tier 5)"
  if tests/vm/run.sh 2>&1 | tee "$logdir/lab.log"; then :; else note_fail "lab"; fi
  p=$(grep -Ec '^  PASS  ' "$logdir/lab.log"); f=$(grep -Ec '^  FAIL  ' "$logdir/lab.log")
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); note_fail "lab (no scenario ran)"; fi
fi

if [ -x scripts/test-package.sh ]; then
  stage "Debian package"
  if scripts/test-package.sh 2>&1 | tee "$logdir/pkg.log" | tail -15; then passed=$((passed + 1)); else failed=$((failed + 1)); note_fail "package"; fi
fi

echo
((${#stage_fail[@]})) && echo "failed stages: ${stage_fail[*]} (logs in $logdir)"
echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
