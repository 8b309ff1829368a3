#!/usr/bin/env bash
# Sets up (idempotently), builds and runs `peercm demo`: two nodes on this machine over loopback
# TCP on the embedded default configuration. Extra arguments go to `peercm demo`
# (see `peercm demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PEERCM_SKIP_FUZZ=1 bash scripts/setup.sh
cargo build --release --quiet -p peercm
exec ./target/release/peercm demo "$@"
