#!/usr/bin/env bash
# The demo: the seed's Controlled Failure Test on a real kernel. Two qemu guests
# with Debian's kernel (DRBD 8.4, LVM thin) run the drbdpool agent; three disks
# are created through the Proxmox plugin on node 1, filled with checksummed files
# and an fsync'ed log, node 1 is powered off hard, and the disks are activated
# on node 2 through the plugin: fsck clean, every checksum and acknowledged
# record present. Prints a timeline and the figures. Needs root; installs what
# it needs on a fresh Debian 12 machine (first run: a few minutes to build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "$0: run as root (loop devices, namespaces, qemu): on a Proxmox node you are root already; elsewhere su - or sudo" >&2
  exit 2
fi
bash scripts/install-deps.sh
cargo build --release --locked
export DRBDPOOL_BIN=$PWD/target/release/drbdpool DRBDPOOL_SHIM=$PWD/perl-shim
exec tests/vm/run.sh demo
