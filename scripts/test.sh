#!/usr/bin/env bash
# The project's test command (the README's): format check, lints, all tests.
# Tests that need Redis/PostgreSQL read KT_TEST_REDIS_URL / KT_TEST_POSTGRES_URL
# and skip with a notice without them; .ci/run sets both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The client tests drive real clients: headless Chromium (the dashboard and
# browser tests, the latter with NSS's certutil), Node.js's own HTTP
# clients, curl, and the JDK's HTTP client (with its keytool). Whichever is
# missing is installed from Debian's packages; without them those tests
# print KT-TEST-SKIPPED, which CI treats as a failure.
missing=""
for pair in chromium:chromium certutil:libnss3-tools node:nodejs curl:curl \
  java:default-jdk-headless keytool:default-jdk-headless; do
  package=${pair#*:}
  case " $missing " in *" $package "*) continue ;; esac
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "scripts/test.sh: installing$missing for the client tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086 # a list of package names
  apt-get install -y -qq $missing >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $missing >/dev/null 2>&1; } ||
    echo "scripts/test.sh: warning: could not install$missing" >&2
fi
cargo test --locked "$@"
