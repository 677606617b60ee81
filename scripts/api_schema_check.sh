#!/usr/bin/env bash
# schemathesis (from the reference venv) against real `slimformer serve` processes: every route
# and method of each server's /openapi.json, at EXAMPLES generated requests per operation and
# phase. One server per head, so that every route is served by a model that has it: the token
# classifier serves all the routes it has; the classifier, masked LM and cross-encoder serve
# the routes of their heads.
#
#   scripts/api_schema_check.sh [EXAMPLES]      (default 1000; logs in runs/schemathesis/)
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-1000}
bin=target/debug/slimformer
[ -x "$bin" ] || cargo build -p slimformer-cli
out=runs/schemathesis
mkdir -p "$out"
status=0
run() { # NAME FIXTURE PORT [PATHS...]
  local name=$1 fixture=$2 port=$3
  shift 3
  local filters=()
  for p in "$@"; do filters+=(--include-path "$p"); done
  "$bin" serve "tests/fixtures/$fixture" --port "$port" --api-key KEY >"$out/$name-server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
  if .venv-ref/bin/schemathesis --config-file tests/api/schemathesis.toml run \
      "http://127.0.0.1:$port/openapi.json" --header 'Authorization: Bearer KEY' \
      --max-examples "$examples" --checks all --workers 2 "${filters[@]}" >"$out/$name.log" 2>&1; then
    echo "api_schema_check: $name: $(grep -E 'generated' "$out/$name.log" | tail -n1 | sed 's/^ *//')"
  else
    status=1
    echo "api_schema_check: $name: FAILED (see $out/$name.log)"
    grep -E 'generated|^- ST' "$out/$name.log" | head -n 20
  fi
  kill -0 "$pid" 2>/dev/null && curl -sf "http://127.0.0.1:$port/health" >/dev/null ||
    { echo "api_schema_check: $name: the server is not alive at the end"; status=1; }
  kill "$pid" && wait "$pid" || true
}
run tagger bert-tokcls 18601
run classifier bert-seqcls 18602 /v1/classify /predict
run masked-lm bert-mlm 18603 /v1/fill-mask
run cross-encoder roberta-rerank 18604 /rerank /v1/rerank
exit "$status"
