#!/usr/bin/env bash
# A short, bounded fuzz run of the wire and plan parsers (CI runs it; FUZZ_SECONDS per target,
# default 20). cargo fuzz needs nightly features: RUSTC_BOOTSTRAP=1 enables them on the
# stable toolchain. The corpus starts from seeds/ (the reference vectors and sample plans)
# in a scratch directory, so nothing generated is left in the tree.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build
for target in wire plan; do
  corpus="$(mktemp -d)"
  cp seeds/"$target"/* "$corpus"/
  echo "fuzz $target for ${SECONDS_PER_TARGET}s"
  cargo fuzz run "$target" "$corpus" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -25
  rm -rf "$corpus"
done
