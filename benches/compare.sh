#!/usr/bin/env bash
# vmi against UCX (ucx_perftest), libfabric (fi_pingpong) and a raw socket floor, on this
# machine, same sizes: one table (with vmi's ratio to each peer) and an SVG plot.
#
#   benches/compare.sh                 # full run; installs ucx-utils and libfabric-bin if missing (root)
#   benches/compare.sh --quick         # short run
#   benches/compare.sh --no-install    # run only the peers already installed
#
# Results: target/compare/compare.txt, compare.json, compare.svg
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
exec target/release/vmi-perf compare "$@"
