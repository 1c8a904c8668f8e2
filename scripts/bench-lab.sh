#!/bin/sh
# Lab benchmark of issue 8 (creation, failover activation, write throughput/latency, each against the floor
# of the same raw commands in the same run): scripts/bench-lab.sh
# Builds the release binary if it is missing or older than the sources, then runs
# tests/vm/scenarios/bench_lab.py on two qemu guests (~10-15 min on 2 shared cores under TCG).
# Output: a table, and one JSON object per figure on lines starting with `BENCH ` (also kept in
# tests/vm/work/<run>-bench_lab.out). Environment: BENCH_ROUNDS (3), BENCH_MB (64), BENCH_LAT_N (200),
# LAB_AGENT_INTERVAL (2), DRBDPOOL_BIN (target/release/drbdpool) and the other tests/vm variables.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin=${DRBDPOOL_BIN:-target/release/drbdpool}
if [ -z "${DRBDPOOL_BIN:-}" ]; then
    if [ ! -x "$bin" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$bin" 2>/dev/null | head -1)" ]; then
        echo "bench-lab: building the release binary" >&2
        cargo build --release --quiet
    fi
fi
echo "bench-lab: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty') on $(uname -n), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
exec tests/vm/run.sh bench_lab
