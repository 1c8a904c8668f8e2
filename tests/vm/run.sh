#!/bin/sh
# Run lab scenarios: tests/vm/run.sh [scenario...]   (default: raw_drbd demo resize_rejoin link_cut live_migration crash_resync node_replace evacuate power_loss many_at_once drbd9_three evacuate9)
# Installs the host packages if missing and builds the guest if its cache does not match (seconds when it
# does). Builds nothing of the project: the drbdpool scenarios use DRBDPOOL_BIN (default
# target/release/drbdpool) and DRBDPOOL_SHIM (default perl-shim/), which must exist already.
# Each scenario's output goes to the terminal and to tests/vm/work/<run>-<scenario>.out; a scenario passed
# if its script exited 0 (tests/vm/cluster.py), and the exit code is non-zero if any scenario failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
./install-deps.sh >/dev/null || { echo "run.sh: installing the host packages failed" >&2; exit 2; }
python3 build-guest.py >/dev/null || { echo "run.sh: building the guest failed" >&2; exit 2; }
[ $# -gt 0 ] || set -- raw_drbd demo resize_rejoin link_cut live_migration crash_resync node_replace evacuate power_loss many_at_once drbd9_three evacuate9
run=$(date +%Y%m%d-%H%M%S)
mkdir -p work
failed=""
summary=""
for s in "$@"; do
    s=${s%.py}
    if [ ! -f "scenarios/$s.py" ]; then
        echo "run.sh: no scenario '$s' (have: $(cd scenarios && ls *.py | grep -v '^dp.py' | sed 's/\.py$//' | tr '\n' ' '))" >&2
        exit 2
    fi
    t0=$(date +%s)
    # The verdict is the scenario's exit code (cluster.py's main: 0 for PASS), kept past the tee.
    rcf=$(mktemp)
    { LAB_RUN_NAME="$run-$s" python3 "scenarios/$s.py"; echo $? >"$rcf"; } 2>&1 | tee "work/$run-$s.out"
    rc=$(cat "$rcf"); rm -f "$rcf"
    t=$(( $(date +%s) - t0 ))
    if [ "$rc" = 0 ]; then summary="$summary\n  PASS  $s (${t}s)"
    elif [ "$rc" = 77 ]; then summary="$summary\n  SKIP  $s (${t}s)"; else summary="$summary\n  FAIL  $s (${t}s)"; failed="$failed $s"; fi
done
printf "\nlab summary (logs under tests/vm/work/$run-*):$summary\n"
[ -z "$failed" ]
