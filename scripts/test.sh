#!/usr/bin/env bash
# The project's test command (the README's): format check, lints, all tests.
# Tests that need Redis/PostgreSQL read KT_TEST_REDIS_URL / KT_TEST_POSTGRES_URL
# and skip with a notice without them; .ci/run sets both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
