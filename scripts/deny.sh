#!/usr/bin/env bash
# Supply-chain checks with cargo-deny and deny.toml: licenses, bans (duplicate
# versions are warnings) and sources (crates.io only), all offline.
#
# `advisories` fetches the RustSec database from GitHub, so it runs only with
# KT_DENY_ADVISORIES=1. Without cargo-deny this prints a notice and exits 0,
# unless KT_DENY_INSTALL=1 asks to install it (`cargo install cargo-deny
# --locked`: 8-9 minutes on one core).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  if [ "${KT_DENY_INSTALL:-0}" = 1 ]; then
    cargo install cargo-deny --locked
  else
    echo "deny: cargo-deny not installed; skipped"
    exit 0
  fi
fi
# The license check reads each crate's manifest and license files: make sure
# they are downloaded (crates.io), then check without touching the network.
cargo fetch --locked >/dev/null
cargo deny --offline check --hide-inclusion-graph licenses bans sources
if [ "${KT_DENY_ADVISORIES:-0}" = 1 ]; then
  cargo deny check advisories
else
  echo "deny: advisories not checked (needs GitHub; KT_DENY_ADVISORIES=1 to run it)"
fi
