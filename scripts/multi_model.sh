#!/usr/bin/env bash
# Several models in one `slimformer serve`: resident memory with 1, 3 and 6 models
# (all-MiniLM-L6-v2 in fp32 and as int8, each model its own folder), and isolation:
# the p50/p99 of one model's short requests alone, beside another model kept busy
# with long ones, and (for contrast) with the long ones sent to the same model.
# Nothing else should run meanwhile. Writes runs/multi-model/report.md.
#
#   scripts/multi_model.sh            # 2 inference threads, 15 s per phase
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
PHASE_SECONDS=${PHASE_SECONDS:-15}
OUT=runs/multi-model
MINILM=assets/all-MiniLM-L6-v2
command -v wrk >/dev/null || { echo "needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }
[ -f "$MINILM/config.json" ] || { echo "$MINILM missing (scripts/fetch-assets.sh)" >&2; exit 2; }
cargo build --release -q -p slimformer-cli
bin=target/release/slimformer
mkdir -p "$OUT/models"
for i in 1 2 3; do
  [ -f "$OUT/models/fp32-$i/config.json" ] || cp -r "$MINILM" "$OUT/models/fp32-$i"
  [ -f "$OUT/models/int8-$i/config.json" ] || "$bin" quantize "$MINILM" --out "$OUT/models/int8-$i" >/dev/null
done

port=18090
base=http://127.0.0.1:$port
server=0
trap 'kill $server 2>/dev/null || true' EXIT
start() { # MODEL-FLAGS...
  "$bin" --threads "$THREADS" serve --port $port --max-concurrent-requests 1024 "$@" \
    >"$OUT/server.out" 2>"$OUT/server.log" &
  server=$!
  for _ in $(seq 1 300); do curl -sf "$base/ready" >/dev/null && return 0; sleep 0.2; done
  echo "the server did not become ready: $(tail -3 "$OUT/server.log")" >&2; exit 1
}
stop() { kill "$server"; wait "$server" || true; }
rss_mb() { awk -v k="$1:" '$1 == k {printf "%.0f", $2 / 1024}' "/proc/$server/status"; }

# A request body of 32 texts of about 250 tokens each, and one of a short sentence.
long_text=$(printf 'the quick brown fox jumps over the lazy dog near the river bank %.0s' $(seq 1 19))
items=""
for _ in $(seq 1 32); do items+="${items:+, }\"$long_text\""; done
long_body="{\"inputs\": [$items]}"
short_body='{"inputs": "A man is playing a guitar on the stage tonight."}'
warm() { # MODEL
  curl -sf -X POST "$base/embed" -H 'Content-Type: application/json' -H "X-Model: $1" -d "$long_body" >/dev/null
}

{
  echo "| models served | resident memory after start (MB) | after one 32 × 250-token request to each (MB) | peak (MB) |"
  echo "|---|---|---|---|"
} >"$OUT/memory.md"
names=(fp32-1 int8-1 fp32-2 int8-2 fp32-3 int8-3)
for n in 1 3 6; do
  flags=()
  for name in "${names[@]:0:n}"; do flags+=(--model "$name=$OUT/models/$name"); done
  start "${flags[@]}"
  idle=$(rss_mb VmRSS)
  for name in "${names[@]:0:n}"; do warm "$name"; done
  echo "| $n (${names[*]:0:n}) | $idle | $(rss_mb VmRSS) | $(rss_mb VmHWM) |" >>"$OUT/memory.md"
  stop
done

probe() { # LABEL: short requests to "light", one connection
  X_MODEL=light BODY="$short_body" wrk -t1 -c1 -d"${PHASE_SECONDS}s" --timeout 30s \
    -s scripts/wrk_report.lua "$base/embed" | tail -n 1 >"$OUT/probe-$1.json"
}
busy() { # MODEL: long requests, 4 connections, in the background
  X_MODEL=$1 BODY="$long_body" wrk -t1 -c4 -d"$((PHASE_SECONDS + 4))s" --timeout 60s \
    -s scripts/wrk_report.lua "$base/embed" | tail -n 1 >"$OUT/busy-$1.json" &
  busy_pid=$!
  sleep 2
}
start --model light="$OUT/models/int8-1" --model heavy="$OUT/models/fp32-1"
warm light; warm heavy
probe alone
busy heavy; probe beside-busy-model; wait $busy_pid
busy light; probe same-model-busy; wait $busy_pid
stop

field() { sed -E "s/.*\"$2\": ([0-9.]+).*/\1/" "$OUT/probe-$1.json"; }
{
  echo "## Memory"
  echo
  cat "$OUT/memory.md"
  echo
  echo "## Isolation: short requests to one model (int8 MiniLM, one connection)"
  echo
  echo "| while | requests/s | p50 (ms) | p99 (ms) | errors |"
  echo "|---|---|---|---|---|"
  for phase in alone beside-busy-model same-model-busy; do
    case $phase in
      alone) what="nothing else runs" ;;
      beside-busy-model) what="another model (fp32 MiniLM) serves 4 clients of 32 × 250-token requests" ;;
      same-model-busy) what="the same 4 clients send their long requests to this model" ;;
    esac
    echo "| $what | $(field $phase requests_per_s) | $(field $phase p50_ms) | $(field $phase p99_ms) | $(field $phase errors) |"
  done
  echo
  echo "$THREADS inference threads, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), ${PHASE_SECONDS} s per phase."
} | tee "$OUT/report.md"
