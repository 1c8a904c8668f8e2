#!/usr/bin/env bash
# The store's size against pmxcfs's own limits (memdb.h: 1 MiB per file, 128 MiB in all,
# 256k inodes) at BENCH_STORE_VOLUMES volumes (default 10,000): a 2-node cluster with 2
# replicas per volume and a 3-node cluster with 3 (every node holds every volume: the largest
# node state). Populates a store as the agents leave it (volume docs, list index, every node's
# sharded state and usage; drbdpool-bench populate) and prints one line per shape; exits 1 when
# a file is over 1 MiB or the store over pmxcfs's total. Figures: docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${BENCH_STORE_VOLUMES:-10000}
if [ -n "${BENCH_BIN_DIR:-}" ]; then
    bench=$BENCH_BIN_DIR/drbdpool-bench
else
    cargo build --release --locked --bin drbdpool-bench 2>&1 | tail -1 >&2
    bench=target/release/drbdpool-bench
fi
work=$(mktemp -d /dev/shm/drbdpool-store-size.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
printf '%-22s %8s %14s %8s %20s %s\n' shape volumes "store bytes" files "largest file bytes" verdict
for shape in "2 2" "3 3"; do
    set -- $shape
    d=$work/n$1r$2
    "$bench" populate --dir "$d" --volumes "$n" --nodes "$1" --replicas "$2" 2>/dev/null
    line=$(perl -MJSON::PP -e '
        local $/; my $m = decode_json(<STDIN>);
        my $ok = $m->{largest_file_bytes} < 1024 * 1024 && $m->{store_bytes} < 128 * 1024 * 1024 && $m->{store_files} < 256 * 1024;
        printf "%-22s %8d %14d %8d %20d %s\n", "'"$1 nodes, $2 replicas"'", $m->{volumes}, $m->{store_bytes}, $m->{store_files},
            $m->{largest_file_bytes}, $ok ? "ok" : "OVER pmxcfs limits";' <"$d/manifest.json")
    echo "$line"
    case $line in *OVER*) fail=1 ;; esac
    rm -rf "$d"
done
echo "pmxcfs limits (memdb.h): 1048576 bytes per file, 134217728 bytes in all, 262144 inodes"
exit $fail
