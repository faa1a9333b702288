#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (or the TARGETs named) for SECONDS
# each (default 30).
#
#   scripts/fuzz.sh [SECONDS [TARGET...]]
#
# Without cargo-fuzz it prints a notice and exits 0, unless KT_FUZZ_INSTALL=1
# asks to install it (`cargo install cargo-fuzz --locked`, about a minute).
# A failing input stops the run (exit 1); libFuzzer saves it under
# fuzz/artifacts/<target>/. Keep it under fuzz/regressions/<target>/ once the
# bug is fixed: `cargo test` replays that folder (tests/suite/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
  if [ "${KT_FUZZ_INSTALL:-0}" = 1 ]; then
    cargo install cargo-fuzz --locked
  else
    echo "fuzz: cargo-fuzz not installed; skipped"
    exit 0
  fi
fi
# cargo fuzz passes -Z flags (sanitizer, coverage); a stable toolchain
# takes them with RUSTC_BOOTSTRAP=1. Harmless on nightly.
export RUSTC_BOOTSTRAP=1

# A new corpus starts from the repository's own samples.
seed() {
  local t=$1 dir=fuzz/corpus/$1 f
  mkdir -p "$dir"
  [ -n "$(ls -A "$dir")" ] && return 0
  case $t in
    sse_decoder)
      for f in tests/fixtures/llm/*/stream.sse; do
        { printf '\000'; cat "$f"; } >"$dir/$(basename "$(dirname "$f")").sse"
      done ;;
    request_classifier)
      for f in tests/fixtures/llm/*/request.json; do
        { printf 'POST\napi.openai.com\n/v1/chat/completions\ncontent-type: application/json\n\n'
          cat "$f"; } >"$dir/$(basename "$(dirname "$f")")"
      done
      printf 'POST github-copilot\ncopilot-proxy.githubusercontent.com\n/v1/engines/gpt-4o/completions\nopenai-intent: copilot-ghost\n\n{"prompt":"x","stream":true}' >"$dir/ghost" ;;
    secret_scanner) cp src/policy/secrets/tests/*.txt "$dir/" ;;
    config_loader) cp examples/*.yaml "$dir/" ;;
    connect_authority)
      printf 'api.openai.com:443' >"$dir/host"; printf '[::1]:8443' >"$dir/v6" ;;
    content_filter)
      printf '(?i)internal-project-\\w+\nsee INTERNAL-PROJECT-Zeus' >"$dir/ci"
      printf '[a-zA-Z_]+\\d\nabc9 XYZ1' >"$dir/class" ;;
    json_text) for f in tests/fixtures/llm/*/*.json; do cp "$f" "$dir/$(basename "$(dirname "$f")")-$(basename "$f")"; done ;;
  esac
}

targets=${*:-$(cargo fuzz list)}
cargo fuzz build
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
  seed "$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  echo "fuzz: $t for ${secs}s"
  status=0
  cargo fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -timeout=10 "${dict[@]}" \
    >"$log" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    tail -n 60 "$log" | cut -c1-400 >&2
    echo "fuzz: $t failed (the input is in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+\s+DONE|Done [0-9]+ runs)' "$log" | sed "s/^/fuzz: $t: /"
done
echo "fuzz: every target ran ${secs}s without a failure"
