#!/usr/bin/env bash
# Load benchmark of kt: builds kt (release) and runs `cargo bench --bench load`,
# which measures every scenario directly and through kt against a local HTTPS
# origin on loopback and prints a markdown table (also written to
# target/bench/results.md and results.json).
#
# Pinning (like the shared proxy bench): the bench process (load client +
# origin) runs on CLIENT_CPUS, kt on KT_CPUS. PIN=0 leaves both unpinned.
#
#   scripts/bench.sh                     # full run (about 2 minutes)
#   scripts/bench.sh --quick             # 0.5 s warm-up + 2 s per run, fewer conns
#   scripts/bench.sh --direct-only       # baseline only, no kt build needed
#   scripts/bench.sh --cache             # cache hit latency and throughput (benches/cache.rs);
#                                        # with KT_TEST_REDIS_URL also the Redis tier
#   DURATION=10 scripts/bench.sh -- --scenarios ka_c1,ka_c32
#   KT_BIN=/path/to/kt scripts/bench.sh --no-build
#
# Environment: KT_BIN (default: ${CARGO_TARGET_DIR:-target}/release/kt),
# WARMUP (1), DURATION (5) seconds per run, IDLE_CONNS (500), MINT_NAMES (200),
# CLIENT_CPUS (0), KT_CPUS (1), PIN (1). Anything after `--` goes to the bench
# binary verbatim (see `scripts/bench.sh -- --help`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir=${CARGO_TARGET_DIR:-target}
kt_bin=${KT_BIN:-$target_dir/release/kt}
warmup=${WARMUP:-1}
duration=${DURATION:-5}
idle_conns=${IDLE_CONNS:-500}
mint_names=${MINT_NAMES:-200}
client_cpus=${CLIENT_CPUS:-0}
kt_cpus=${KT_CPUS:-1}
pin=${PIN:-1}
build=1
direct_only=0
cache=0
passthrough=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --quick) warmup=0.5 duration=2 idle_conns=200 mint_names=50 ;;
        --direct-only) direct_only=1 ;;
        --cache) cache=1 ;;
        --no-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; passthrough=("$@"); break ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; then
    [ "$pin" = 1 ] && echo "bench.sh: fewer than 2 CPUs or no taskset: running unpinned" >&2
    pin=0
fi

if [ "$direct_only" = 0 ] && [ "$build" = 1 ]; then
    echo "bench.sh: cargo build --release" >&2
    cargo build --release
fi
if [ "$cache" = 1 ]; then
    cargo bench --bench cache --no-run
    [ -x "$kt_bin" ] || { echo "bench.sh: KT_BIN=$kt_bin is not an executable" >&2; exit 1; }
    export KT_BIN
    KT_BIN=$(realpath "$kt_bin")
    if [ "$pin" = 1 ]; then
        export KT_CPUS=$kt_cpus
        exec taskset -c "$client_cpus" cargo bench --bench cache -- "${passthrough[@]}"
    fi
    exec cargo bench --bench cache -- "${passthrough[@]}"
fi
# Compile the bench unpinned; the pinned run below then only executes it.
cargo bench --bench load --no-run

# The idle-connection test holds about 2 descriptors per connection here.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=(--warmup "$warmup" --duration "$duration" --idle-conns "$idle_conns" --mint-names "$mint_names")
if [ "$direct_only" = 1 ]; then
    args+=(--direct-only)
else
    [ -x "$kt_bin" ] || { echo "bench.sh: KT_BIN=$kt_bin is not an executable" >&2; exit 1; }
    args+=(--kt-bin "$(realpath "$kt_bin")")
fi
if [ "$pin" = 1 ]; then
    args+=(--kt-cpus "$kt_cpus")
    exec taskset -c "$client_cpus" cargo bench --bench load -- "${args[@]}" "${passthrough[@]}"
fi
args+=(--kt-cpus none)
exec cargo bench --bench load -- "${args[@]}" "${passthrough[@]}"
