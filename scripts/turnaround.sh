#!/usr/bin/env bash
# kt's turnaround at concurrency 1: the time from the `recvfrom` that brings
# a message to the `writev` that passes it on, per direction (request:
# client -> origin; response: origin -> client). This is the latency kt adds
# of its own, without the wake-ups of the client's and origin's CPUs that
# the load bench's p50 includes; on a VM whose idle CPUs halt, a turnaround
# a microsecond longer can cost tens of microseconds of p50 (see README,
# Performance). Traced with bpftrace on the raw syscall tracepoints while
# `scripts/bench.sh` runs the `ka_c1` scenario.
#
#   scripts/turnaround.sh                          # built-in chain
#   scripts/turnaround.sh --kt-arg=--policy-config --kt-arg=my.yaml
#   KT_BIN=/path/to/kt scripts/turnaround.sh --no-build
#
# Arguments other than --no-build go to the bench binary (after `--`).
# Environment: KT_BIN, DURATION (4), SCENARIO (ka_c1) as for bench.sh;
# KEEP=1 keeps the trace files. Needs root, bpftrace (`apt-get install
# bpftrace`), ss and python3; mounts tracefs when it is not.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=--build
args=()
for a in "$@"; do
    case $a in
        --no-build) build=--no-build ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$a") ;;
    esac
done

die() { echo "turnaround.sh: $*" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || die "the trace uses x86_64 syscall numbers"
[ "$(id -u)" = 0 ] || die "bpftrace needs root"
command -v bpftrace >/dev/null || die "bpftrace not found (apt-get install bpftrace)"
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing || die "cannot mount tracefs"
fi
ulimit -l unlimited 2>/dev/null || true

out=$(mktemp -d)
[ -n "${KEEP:-}" ] && echo "turnaround.sh: files in $out" >&2
trap '[ -n "${KEEP:-}" ] || rm -rf "$out"' EXIT

bench_args=()
[ "$build" = --no-build ] && bench_args+=(--no-build)
DURATION=${DURATION:-4} scripts/bench.sh "${bench_args[@]}" -- \
    --scenarios "${SCENARIO:-ka_c1}" "${args[@]}" >"$out/bench.txt" 2>&1 &
bench=$!

# The gateway the bench starts (its data dir is kt-load-bench-*/kt-main),
# once the bench is built.
pid=""
while kill -0 "$bench" 2>/dev/null; do
    pid=$(pgrep -f "kt-load-bench-[0-9]+/kt-main" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { cat "$out/bench.txt" >&2; die "the bench did not start kt"; }
origin_port=$(tr '\0' ' ' <"/proc/$pid/cmdline" | grep -oE -- '--connect-to [^ ]+' | grep -oE '[0-9]+$' | head -1 || true)
[ -n "$origin_port" ] || die "no --connect-to in kt's command line"

# x86_64 syscall numbers: writev 20, recvfrom 45. Turnarounds are kept by
# the socket written, in units of 0.1 us; which sockets lead upstream is
# learnt from `ss` during the run (the pooled upstream connection may be
# older than the trace).
cat >"$out/turn.bt" <<BT
tracepoint:raw_syscalls:sys_enter /pid == $pid && args->id == 45/ { @rfd[tid] = args->args[0]; }
tracepoint:raw_syscalls:sys_exit /pid == $pid && args->id == 45 && args->ret > 0/ {
    @last[tid] = nsecs; @lastfd[tid] = @rfd[tid];
}
tracepoint:raw_syscalls:sys_enter /pid == $pid && args->id == 20 && @last[tid] && @lastfd[tid] != args->args[0]/ {
    @turn[args->args[0]] = lhist((nsecs - @last[tid]) / 100, 0, 1000, 1);
    delete(@last[tid]);
}
END { clear(@rfd); clear(@last); clear(@lastfd); }
BT
bpftrace -f json -p "$pid" "$out/turn.bt" >"$out/trace.json" 2>"$out/bpftrace.err" &
tracer=$!
while kill -0 "$pid" 2>/dev/null; do
    ss -tnpH state established 2>/dev/null | grep "pid=$pid," >>"$out/sockets.txt" || true
    sleep 0.5
done
wait "$bench" || { cat "$out/bench.txt" >&2; die "the bench failed"; }
wait "$tracer" || true

grep -E "^\| ${SCENARIO:-ka_c1} \|" "$out/bench.txt" || true
[ -s "$out/trace.json" ] || { grep -v RLIMIT_MEMLOCK "$out/bpftrace.err" >&2; die "bpftrace traced nothing"; }
touch "$out/sockets.txt"
python3 - "$out/trace.json" "$out/sockets.txt" "$origin_port" <<'PY'
import json, re, sys

trace, sockets, origin_port = sys.argv[1:4]
upstream = set()
for line in open(sockets):
    fields = line.split()
    # Recv-Q Send-Q Local:Port Peer:Port Process
    if len(fields) >= 5 and fields[3].rsplit(":", 1)[-1] == origin_port:
        upstream.update(re.findall(r"fd=(\d+)", line))
per_fd = {}
for line in open(trace):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("type") in ("hist", "lhist") and "@turn" in msg.get("data", {}):
        per_fd = msg["data"]["@turn"]
if not per_fd:
    sys.exit("turnaround.sh: no turnarounds traced")
if not upstream:
    sys.exit("turnaround.sh: kt's upstream socket was not seen")
merged = {"request": {}, "response": {}}
for fd, buckets in per_fd.items():
    into = merged["request" if fd in upstream else "response"]
    for b in buckets:
        lo = b.get("min", 0)
        into[lo] = into.get(lo, 0) + b["count"]
for name, counts in merged.items():
    buckets = sorted((lo, c) for lo, c in counts.items() if c)
    total = sum(c for _, c in buckets)
    if not total:
        continue

    def pct(p):
        seen = 0
        for lo, c in buckets:
            seen += c
            if seen >= p * total:
                return lo / 10
        return buckets[-1][0] / 10

    mean = sum(lo * c for lo, c in buckets) / total / 10
    print(f"{name:>8}: {total} turnarounds, p50 {pct(0.5):.1f} us, p90 {pct(0.9):.1f} us, "
          f"p99 {pct(0.99):.1f} us, mean {mean:.1f} us")
PY
