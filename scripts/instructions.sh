#!/usr/bin/env bash
# Instructions kt executes per request, counted by valgrind's callgrind:
# unlike wall-clock and CPU-time figures, instruction counts do not move
# with other tenants of a VM or with the CPU's idle states, so two builds
# can be compared to the percent. Kernel work (TCP, the syscalls) is not
# counted: this measures kt's own code and its libraries.
#
# Each scenario of `cargo bench --bench load` is run twice through kt under
# callgrind, with LOW and HIGH requests; (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW)
# cancels start-up and shutdown. Under valgrind kt runs ~50x slower, so the
# counts are kept small.
#
#   scripts/instructions.sh                       # ka_c32 and newconn_c8
#   SCENARIOS=ka_c32,large_c4 scripts/instructions.sh
#   TOP=25 scripts/instructions.sh                # also the functions whose
#                                                 # counts grew the most per request
#   KT_BIN=/path/to/kt scripts/instructions.sh --no-build
#   KT_ARGS='--policy-config my.yaml' scripts/instructions.sh   # another chain
#
# Environment: KT_BIN (default: ${CARGO_TARGET_DIR:-target}/release/kt),
# KT_ARGS (extra words for `kt gateway run`), SCENARIOS (ka_c32,newconn_c8), LOW (500), HIGH (2000), TOP (0),
# OUT (target/bench/instructions). Needs valgrind and python3.
# Note: valgrind reports no SHA extensions, so SHA-256 (the audit chain)
# runs the portable code here and counts more than it costs natively.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir=${CARGO_TARGET_DIR:-target}
kt_bin=${KT_BIN:-$target_dir/release/kt}
scenarios=${SCENARIOS:-ka_c32,newconn_c8}
low=${LOW:-500}
high=${HIGH:-2000}
top=${TOP:-0}
out=${OUT:-$target_dir/bench/instructions}
build=1

while [ $# -gt 0 ]; do
    case $1 in
        --no-build) build=0 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "instructions.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v valgrind >/dev/null || {
    echo "instructions.sh: valgrind is not installed (Debian: apt-get install valgrind)" >&2
    exit 1
}
[ "$low" -ge 1 ] && [ "$high" -gt "$low" ] || {
    echo "instructions.sh: need 1 <= LOW < HIGH (got LOW=$low HIGH=$high)" >&2
    exit 2
}
if [ "$build" = 1 ]; then
    cargo build --release --bin kt
fi
[ -x "$kt_bin" ] || { echo "instructions.sh: KT_BIN=$kt_bin is not an executable" >&2; exit 1; }
kt_bin=$(realpath "$kt_bin")
cargo bench --bench load --no-run

mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The load bench starts kt itself; this wrapper puts callgrind in between.
cat >"$work/kt" <<EOF
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file="\$KT_CALLGRIND_OUT" "$kt_bin" "\$@" 2>>"$out/valgrind.log"
EOF
chmod +x "$work/kt"

total_ir() { awk '/^summary:/ { print $2; exit }' "$1"; }

printf '| scenario | instructions per request | requests (low, high) |\n|---|---:|---|\n' >"$out/results.md"
IFS=, read -ra list <<<"$scenarios"
declare -A served
kt_args=()
for word in ${KT_ARGS:-}; do kt_args+=("--kt-arg=$word"); done
for scenario in "${list[@]}"; do
    for n in "$low" "$high"; do
        file="$out/$scenario.$n.callgrind"
        rm -f "$file"
        echo "instructions.sh: $scenario, $n requests under callgrind" >&2
        KT_CALLGRIND_OUT=$file cargo bench --bench load -- --kt-bin "$work/kt" \
            --kt-cpus none --scenarios "$scenario" --warmup 0 --duration 600 \
            --max-requests "$n" --out "$work/load" "${kt_args[@]}" >"$work/load.log" 2>&1 || {
            echo "instructions.sh: the load bench failed; its log:" >&2
            tail -20 "$work/load.log" >&2
            exit 1
        }
        # Exactly the requests kt served, from the bench's own record.
        read -r ok errors < <(python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["scenarios"][0]["kt"]
print(s["requests_ok_incl_warmup"], s["errors"])' "$work/load/results.json")
        if [ "$errors" != 0 ]; then
            echo "instructions.sh: $scenario through kt had $errors errors; see $work/load.log" >&2
            exit 1
        fi
        served[$n]=$ok
        [ -s "$file" ] || { echo "instructions.sh: callgrind wrote no profile for $scenario" >&2; exit 1; }
    done
    a=$(total_ir "$out/$scenario.$low.callgrind")
    b=$(total_ir "$out/$scenario.$high.callgrind")
    na=${served[$low]} nb=${served[$high]}
    [ "$nb" -gt "$na" ] || { echo "instructions.sh: $scenario served $na then $nb requests" >&2; exit 1; }
    per=$(( (b - a) / (nb - na) ))
    printf '| %s | %s | %s, %s |\n' "$scenario" "$per" "$na" "$nb" >>"$out/results.md"
    if [ "$top" -gt 0 ]; then
        # Per-function growth between the two runs, i.e. cost per request.
        for n in "$low" "$high"; do
            callgrind_annotate --threshold=100 "$out/$scenario.$n.callgrind" 2>/dev/null |
                awk 'match($0, /^ *[0-9,]+ \( *[0-9.]+%\) +/) {
                        v = $1; gsub(",", "", v); print v "\t" substr($0, RLENGTH + 1) }' \
                    >"$work/$n.tsv"
        done
        echo "### $scenario: instructions per request by function (top $top)"
        awk -F'\t' -v span=$((nb - na)) 'NR == FNR { low[$2] = $1; next }
            { printf "%10d  %s\n", ($1 - low[$2]) / span, substr($2, 1, 140) }' \
            "$work/$low.tsv" "$work/$high.tsv" | sort -rn | head -n "$top" || true
    fi
done
cat "$out/results.md"
echo "instructions.sh: profiles in $out (callgrind_annotate <file>)" >&2
