#!/usr/bin/env bash
# Quick start on a fresh machine: fetch the real all-MiniLM-L6-v2, build, and
# embed example sentences, ranking them by similarity to a query.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release -p slimformer-cli -p slimformer --examples --bins
MODEL=assets/all-MiniLM-L6-v2
echo "== slimformer inspect $MODEL"
target/release/slimformer inspect "$MODEL"
echo "== slimformer embed (first numbers of each embedding)"
target/release/slimformer embed "$MODEL" \
  --text "A man is playing a guitar." --text "The new movie is awesome." \
  | cut -c1-110
echo "== ranking by cosine similarity"
target/release/examples/rank "$MODEL" "How do I deploy a model on a CPU server?" \
  "Serving transformer models on ordinary CPUs with low latency." \
  "The cat sat on the warm windowsill all afternoon." \
  "Quantization makes neural networks smaller and faster." \
  "A recipe for lemon cake with fresh berries." \
  "REST APIs let other applications call the model."
echo "== slimformer serve: the REST service on 127.0.0.1:18080"
target/release/slimformer serve "$MODEL" --port 18080 > /tmp/slimformer-quickstart.out 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/ready >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:18080/v1/embed -H 'Content-Type: application/json' \
  -d '{"inputs": ["REST APIs let other applications call the model."]}' | cut -c1-110
echo
curl -sf http://127.0.0.1:18080/v1/models
echo
kill $SERVER; wait $SERVER || true
