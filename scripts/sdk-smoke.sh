#!/usr/bin/env bash
# The official OpenAI and Anthropic Python SDKs against kt, end to end on
# loopback: a local stand-in origin for api.openai.com and api.anthropic.com
# (its own test CA, reached through --connect-to), kt in front of it, and
# both SDKs making whole and streamed calls, first through the direct API
# (base URL, a kt access key) and then through the forward proxy
# (HTTPS_PROXY, kt's CA trusted). Checks the answers, which credential
# reached the origin in each mode (provider keys injected for the direct
# API, the client's own passed through when intercepting, the kt key never
# forwarded) and the audit trail (16 events, usage recorded, chain intact).
#
# Needs python3 (with venv), openssl and the package index (the SDKs are
# installed into target/sdk-smoke/venv on the first run).
#
#   scripts/sdk-smoke.sh                 # builds kt (release) first
#   KT_BIN=/path/to/kt scripts/sdk-smoke.sh --no-build
#
# Environment: KT_BIN (default ${CARGO_TARGET_DIR:-target}/release/kt),
# SDKS (pip requirement specs, default "openai anthropic").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir=${CARGO_TARGET_DIR:-target}
kt=${KT_BIN:-$target_dir/release/kt}
if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --locked --bin kt
fi
kt=$(realpath "$kt")
for tool in python3 openssl curl; do
  command -v "$tool" >/dev/null || { echo "sdk-smoke: $tool is needed" >&2; exit 2; }
done

venv=$target_dir/sdk-smoke/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC2086 # SDKS is a list of requirement specs
"$venv/bin/pip" install --quiet --disable-pip-version-check ${SDKS:-openai anthropic}
"$venv/bin/python" -c 'import openai, anthropic; print("sdk-smoke: openai", openai.__version__, "anthropic", anthropic.__version__)'

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The origin's test PKI: a CA and one leaf for both provider hosts.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=kt sdk-smoke test CA" -keyout "$work/ca.key" -out "$work/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=api.openai.com" \
  -keyout "$work/origin.key" -out "$work/origin.csr" 2>/dev/null
printf 'subjectAltName=DNS:api.openai.com,DNS:api.anthropic.com\nextendedKeyUsage=serverAuth\n' >"$work/ext.cnf"
openssl x509 -req -in "$work/origin.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 1 -extfile "$work/ext.cnf" -out "$work/origin.pem" 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port)
kt_port=$(free_port)

python3 scripts/sdk/origin.py "$origin_port" "$work/origin.pem" "$work/origin.key" \
  >"$work/origin.out" 2>"$work/origin.log" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/origin.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/origin.out" || { echo "sdk-smoke: the origin did not start" >&2; cat "$work/origin.log" >&2; exit 1; }

export KEEPTRUSTS_HOME=$work/home
kt_key=$("$kt" keys create --user sdk-smoke | grep -o 'kt_[A-Za-z0-9]*' | head -n 1)
OPENAI_API_KEY=sk-provider-openai ANTHROPIC_API_KEY=sk-provider-anthropic \
  "$kt" gateway run --listen "127.0.0.1:$kt_port" --upstream-ca "$work/ca.pem" \
  --connect-to "api.openai.com:443:127.0.0.1:$origin_port" \
  --connect-to "api.anthropic.com:443:127.0.0.1:$origin_port" >"$work/kt.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$kt_port/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$kt_port/readyz" >/dev/null || { echo "sdk-smoke: kt did not start" >&2; cat "$work/kt.log" >&2; exit 1; }

fail() { echo "sdk-smoke: FAIL: $*" >&2; echo "--- kt log" >&2; tail -n 30 "$work/kt.log" >&2; exit 1; }

echo "sdk-smoke: direct API (http://127.0.0.1:$kt_port/v1)"
env -u HTTPS_PROXY -u HTTP_PROXY -u https_proxy -u http_proxy -u ALL_PROXY -u all_proxy \
  "$venv/bin/python" scripts/sdk/clients.py direct "http://127.0.0.1:$kt_port" "$kt_key" || fail "direct API"
echo "sdk-smoke: forward proxy (HTTPS_PROXY=http://127.0.0.1:$kt_port)"
HTTPS_PROXY=http://127.0.0.1:$kt_port SSL_CERT_FILE=$KEEPTRUSTS_HOME/certs/kt-ca.pem NO_PROXY= \
  "$venv/bin/python" scripts/sdk/clients.py proxy || fail "forward proxy"

# What reached the origin, and what the audit trail says.
"$kt" events tail -n 100 --no-follow --json >"$work/events.jsonl"
python3 - "$work/origin.log" "$work/events.jsonl" "$kt_key" <<'EOF' || fail "origin or audit checks"
import json, sys
seen = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
events = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
kt_key = sys.argv[3]
def cred(r):
    return r["x-api-key"] if r["host"] == "api.anthropic.com" and r["x-api-key"] else r["authorization"]
want = (["Bearer sk-provider-openai"] * 2 + ["sk-provider-anthropic"] * 2
        + ["Bearer sk-client-own-openai"] * 2 + ["sk-ant-client-own"] * 2)
got = [cred(r) for r in seen]
ok = len(got) == 8 and all(w in (g or "") for g, w in zip(got, want))
if not ok or any(kt_key in json.dumps(r) for r in seen):
    sys.exit(f"credentials at the origin: {got}, want {want} and never the kt key")
print("ok: provider keys injected for the direct API, the client's own passed through when intercepting")
if len(events) != 16:
    sys.exit(f"{len(events)} audit events, want 16")
out = [e for e in events if e["phase"] == "output"]
bad = [e for e in out if e.get("action") != "pass" or e.get("status") != 200 or e.get("tokens_out") != 4]
if bad:
    sys.exit(f"output events without a 200 pass and 4 tokens out: {bad}")
modes = sorted(e["mode"] for e in out)
if modes != ["direct"] * 4 + ["proxy"] * 4:
    sys.exit(f"modes {modes}")
if [e.get("user") for e in out if e["mode"] == "direct"] != ["sdk-smoke"] * 4:
    sys.exit("direct API events do not name the key's user")
print("ok: 16 audit events, usage recorded for every answer, the key's user named")
EOF
"$kt" events verify >/dev/null || fail "kt events verify"
echo "ok: kt events verify"
echo "sdk-smoke: all checks passed"
