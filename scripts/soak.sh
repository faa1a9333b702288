#!/usr/bin/env bash
# Capacity and soak run of kt (benches/soak.rs): 10,000 idle blind tunnels
# at once, 1,000 intercepted keep-alive clients, then a 10-minute mixed soak
# with kt's RSS and open descriptors sampled; writes target/bench/soak.md and
# exits non-zero on any error or growth. Loopback only, bounded in time.
#
#   scripts/soak.sh                                  # full run (~12 minutes)
#   TUNNELS=2000 CLIENTS=200 SOAK_MINUTES=1 scripts/soak.sh     # quick
#   KT_BIN=/path/to/kt scripts/soak.sh --no-build
#
# Environment: KT_BIN (default ${CARGO_TARGET_DIR:-target}/release/kt),
# TUNNELS (10000), CLIENTS (1000), CLIENT_SECONDS (20), SOAK_MINUTES (10),
# SAMPLE_SECONDS (30).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir=${CARGO_TARGET_DIR:-target}
export KT_BIN=${KT_BIN:-$target_dir/release/kt}
build=1
if [ "${1:-}" = "--no-build" ]; then
  build=0
  shift
fi
if [ "$build" = 1 ]; then
  cargo build --release --locked --bin kt
fi
# Every tunnel is two descriptors in kt and two in the bench (client and
# origin side): raise the limit as far as this shell may.
want=$(( ${TUNNELS:-10000} * 2 + 512 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
exec cargo bench --locked --bench soak -- "$@"
