#!/usr/bin/env bash
# Performance of the plugin calls against the floor (docs/BENCHMARKS.md).
# One command: builds release, populates stores of 100, 1,000 and 10,000
# volumes, times status/path/list/activate through the real Perl shim and the
# real helper, the bare helper, the exec floor, peak RSS, and prints a table.
#
# Knobs (environment):
#   BENCH_SIZES="100 1000 10000"  store sizes          BENCH_COUNT=200  calls per measurement
#   BENCH_WARMUP=20               warm-up calls        BENCH_DIR=...    work directory (default in /dev/shm)
#   BENCH_BIN_DIR=DIR             use drbdpool + drbdpool-bench from DIR, skip the build (lab guests)
#   BENCH_KEEP=1                  keep the work directory
#   BENCH_PMXCFS=1                also the pmxcfs mode: the same calls with the store on the real pmxcfs
#                                 of the tier-4 cluster (tests/pmxcfs_bench.rs; root, ../shared beside the
#                                 repository for the pmxcfs build), sizes BENCH_PMXCFS_SIZES="1000 10000"
# Output: the table on stdout, raw JSON lines in $BENCH_DIR/results.jsonl
# (kept with BENCH_KEEP=1). Needs: cargo (unless BENCH_BIN_DIR), gcc with a
# static libc (libc6-dev), perl.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sizes=${BENCH_SIZES:-"100 1000 10000"}
count=${BENCH_COUNT:-200}
warmup=${BENCH_WARMUP:-20}
work=${BENCH_DIR:-$(mktemp -d /dev/shm/drbdpool-bench.XXXXXX)}
mkdir -p "$work"
[ "${BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ -n "${BENCH_BIN_DIR:-}" ]; then
    bindir=$BENCH_BIN_DIR
else
    echo "building release..." >&2
    cargo build --release --locked --bin drbdpool --bin drbdpool-bench 2>&1 | tail -1 >&2
    bindir=$root/target/release
fi
helper=$bindir/drbdpool
bench=$bindir/drbdpool-bench

# The floor: the cheapest possible process, a static binary that returns 0.
printf 'int main(void) { return 0; }\n' >"$work/true.c"
gcc -static -O2 -o "$work/true-static" "$work/true.c"

results=$work/results.jsonl
: >"$results"
tag() { perl -MJSON::PP -ne 'my $j = decode_json($_); $j->{volumes} = '"$1"'; print encode_json($j), "\n"' >>"$results"; }

"$bench" time --count "$count" --warmup "$warmup" --label floor-bare -- "$work/true-static" | tag 0

for n in $sizes; do
    d=$work/n$n
    mkdir -p "$d"
    echo "populating $n volumes..." >&2
    "$bench" populate --dir "$d" --volumes "$n" --sim
    export DRBDPOOL_STORE=$d/store DRBDPOOL_NODE=bench1 DRBDPOOL_DRBD=sim DRBDPOOL_SIM_DIR=$d/sim DRBDPOOL_RUN_DIR=$d/run
    # Requests as the shim sends them (a volume that is Primary here for path/activate).
    vol=$(perl -MJSON::PP -e 'local $/; my $m = decode_json(<STDIN>); print $m->{active}->[0]' <"$d/manifest.json")
    req() { printf '{"args":%s,"node":"bench1","scfg":{"content":"images,rootdir","drbdpool-backend":"file","drbdpool-dir":"%s"},"storeid":"dp","version":1}\n' "$1" "$d/images"; }
    req '{}' >"$d/req-status.json"
    req '{}' >"$d/req-list.json"
    req "{\"volname\":\"$vol\"}" >"$d/req-path.json"
    req "{\"volname\":\"$vol\"}" >"$d/req-activate.json"
    echo "timing $n volumes..." >&2
    for m in status path list activate; do
        "$bench" time --count "$count" --warmup "$warmup" --check --label "bare-$m" --stdin "$d/req-$m.json" -- "$helper" plugin "$m" | tag "$n"
    done
    "$bench" time --count "$count" --warmup "$warmup" --check --label cli-status -- "$helper" status | tag "$n"
    "$bench" time --count "$count" --warmup "$warmup" --check --label cli-volume-list -- "$helper" volume list | tag "$n"
    "$bench" read-docs --dir "$d" --count 20 | tag "$n"
    DRBDPOOL_BIN=$helper perl -I "$root/perl-shim" -I "$root/perl-shim/t/lib" "$root/scripts/bench/driver.pl" \
        --manifest "$d/manifest.json" --floor "$work/true-static" --count "$count" --warmup "$warmup" | tag "$n"
    if [ "$n" = 1000 ]; then
        echo "agent memory at $n volumes..." >&2
        "$bench" agent-rss --dir "$d" --passes 5 | tag "$n"
    fi
done

if [ "${BENCH_PMXCFS:-0}" = 1 ]; then
    echo "pmxcfs mode: starting the tier-4 cluster..." >&2
    unset DRBDPOOL_STORE DRBDPOOL_NODE DRBDPOOL_DRBD DRBDPOOL_SIM_DIR DRBDPOOL_RUN_DIR
    BENCH_RESULTS=$results BENCH_COUNT=$count BENCH_WARMUP=$warmup \
        cargo test --release --locked --test pmxcfs_bench -- --ignored --nocapture --exact pmxcfs_bench >&2
fi

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "helper: $helper ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown))  calls per measurement: $count after $warmup warm-up"
    echo
} 
perl "$root/scripts/bench/report.pl" "$results"
