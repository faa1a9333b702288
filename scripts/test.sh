#!/usr/bin/env bash
# The project's test command (the README's): format check, lints, all tests.
# Tests that need Redis/PostgreSQL read KT_TEST_REDIS_URL / KT_TEST_POSTGRES_URL
# and skip with a notice without them; .ci/run sets both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The dashboard test and the browser test drive a real headless Chromium,
# the browser test with NSS's certutil (Debian's chromium and
# libnss3-tools); without them those tests print KT-TEST-SKIPPED, which CI
# treats as a failure.
if { ! command -v chromium || ! command -v certutil; } >/dev/null 2>&1 &&
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "scripts/test.sh: installing chromium and libnss3-tools for the browser tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium libnss3-tools >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium libnss3-tools >/dev/null 2>&1; } ||
    echo "scripts/test.sh: warning: could not install chromium and libnss3-tools" >&2
fi
cargo test --locked "$@"
