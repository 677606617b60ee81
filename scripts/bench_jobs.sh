#!/usr/bin/env bash
# Whole-job benchmark: what a user runs end to end, slimformer against the Python tools they
# would otherwise use, on the same corpus, model and threads, in one run, alternating.
#   - embedding a corpus of real mixed-length texts to a file: `slimformer embed` (fp32, int8,
#     bf16) against sentence-transformers' encode(batch_size=32) and a tuned ONNX Runtime
#     pipeline (scripts/bench_jobs_reference.py), each a whole process, outputs checked equal;
#   - the model stage alone (`slimformer bench --input`) on the same packed batches;
#   - peak memory of `embed` on 10,000 and 1,000,000 lines;
#   - `slimformer classify` with a fine-tuned MiniLM against transformers' pipeline;
#   - the server under mixed-length traffic (wrk, 1-16 corpus texts a request) against the
#     FastAPI reference (scripts/serve_reference.py).
# Writes runs/bench-jobs/ and the "Whole jobs" section of docs/PERFORMANCE.md (kept in
# docs/PERFORMANCE-jobs.md). Nothing else should run meanwhile. Takes about an hour on 2 cores.
#
#   scripts/bench_jobs.sh                       # 2 threads, 3 rounds
#   THREADS=8 ROUNDS=5 scripts/bench_jobs.sh
#   STEPS="embed classify" scripts/bench_jobs.sh   # a subset (embed classify memory serve)
#   RENDER_ONLY=1 scripts/bench_jobs.sh         # rewrite the docs from the saved runs
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
TEXTS=${TEXTS:-6000}
SERVE_SECONDS=${SERVE_SECONDS:-20}
STEPS=${STEPS:-"embed classify memory serve"}
OUT=${OUT:-runs/bench-jobs}
PY=.venv-ref/bin/python
SF=${CARGO_TARGET_DIR:-target}/release/slimformer
REF=scripts/bench_jobs_reference.py
timed() { python3 scripts/bench_jobs.py time "$TIMES" "$@"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

render() {
  python3 scripts/bench_jobs.py render "$OUT" > docs/PERFORMANCE-jobs.md.part
  mv docs/PERFORMANCE-jobs.md.part docs/PERFORMANCE-jobs.md
  # docs/PERFORMANCE.md carries the section between its markers (scripts/bench_compare.sh
  # writes the rest of the page and keeps them).
  python3 - <<'PY'
import re
page = open("docs/PERFORMANCE.md").read()
section = open("docs/PERFORMANCE-jobs.md").read().rstrip()
start, end = "<!-- whole-jobs -->", "<!-- /whole-jobs -->"
block = f"{start}\n{section}\n{end}"
if start in page:
    page = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, page, flags=re.S)
else:
    # Where scripts/bench_compare.sh puts it: after the kernel table, before the notes.
    notes = open("docs/PERFORMANCE-notes.md").read().strip()
    at = page.find(notes[:200]) if notes else -1
    page = page[:at] + block + "\n\n" + page[at:] if at > 0 else f"{page.rstrip()}\n\n{block}\n"
open("docs/PERFORMANCE.md.part", "w").write(page)
PY
  mv docs/PERFORMANCE.md.part docs/PERFORMANCE.md
  echo "docs/PERFORMANCE.md: whole jobs section written"
}
if [ -n "${RENDER_ONLY:-}" ]; then render; exit 0; fi

[ -x "$PY" ] || scripts/setup-reference.sh
scripts/fetch-assets.sh all
cargo build --release -p slimformer-cli
command -v wrk >/dev/null || { echo "needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"

# The corpus and what every side needs before the clock starts.
python3 scripts/make_job_corpus.py "$OUT" --texts "$TEXTS" > /dev/null
[ -f "$OUT/model.onnx" ] || $PY $REF export "$MODEL" "$OUT/model.onnx" > "$OUT/export.json"
$SF --threads "$THREADS" bench "$MODEL" --input "$OUT/corpus.txt" --warmup 1 --runs 3 --json \
  > "$OUT/bench-input.json"
python3 - "$OUT" "$THREADS" <<'PY'
import json, os, platform, sys
out, threads = sys.argv[1], int(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
bench = json.load(open(f"{out}/bench-input.json"))
meta = {"threads": threads, "cores": os.cpu_count(), "cpu": cpu, "tokens": bench["tokens"], "bench_input": bench}
json.dump(meta, open(f"{out}/meta.json", "w"), indent=1)
PY

embed_ours() { # PRECISION ROUND [OUTPUT]
  timed "slimformer-$1" "$2" -- $SF --threads "$THREADS" --precision "$1" embed "$MODEL" \
    --input "$OUT/corpus.txt" --output "${3:-$OUT/slimformer-$1.npy}"
}
if has embed; then
  TIMES=$OUT/times-embed.jsonl && rm -f "$TIMES"
  for r in $(seq 1 "$ROUNDS"); do
    embed_ours fp32 "$r"
    timed st "$r" -- $PY $REF st "$MODEL" "$OUT/corpus.txt" "$OUT/st.npy" --threads "$THREADS"
    timed ort "$r" -- $PY $REF ort "$MODEL" "$OUT/corpus.txt" "$OUT/ort.npy" --threads "$THREADS" \
      --onnx "$OUT/model.onnx"
    embed_ours int8 "$r"
    embed_ours bf16 "$r"
  done
  # The parquet output with ids, read back by pandas, polars and DuckDB in the check.
  $SF --threads "$THREADS" embed "$MODEL" --input "$OUT/corpus.jsonl" --id-col id \
    --output "$OUT/embed.parquet"
fi

if has classify; then
  TIMES=$OUT/times-classify.jsonl && rm -f "$TIMES"
  CLASSIFIER=$OUT/classifier
  if [ ! -f "$CLASSIFIER/model.safetensors" ]; then
    # A short fine-tune is enough to time inference: the weights' quality does not change it.
    $SF --threads "$THREADS" finetune "$MODEL" --train assets/data/rotten_tomatoes/train.csv \
      --dev assets/data/rotten_tomatoes/dev.csv --epochs 1 --max-steps 200 --batch 32 --max-len 128 \
      --out "$OUT/finetune" --overwrite > "$OUT/finetune.json" 2> "$OUT/finetune.log"
    rm -rf "$CLASSIFIER" && cp -r "$OUT/finetune" "$CLASSIFIER" && rm -rf "$CLASSIFIER/resume"
    python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); \
print(f\"200 steps of batch 32; dev accuracy {r['dev']['accuracy']:.3f}\")" "$OUT/finetune.json" \
      > "$OUT/classifier.txt" || true
  fi
  for r in $(seq 1 "$ROUNDS"); do
    timed classify "$r" -- $SF --threads "$THREADS" classify "$CLASSIFIER" --input "$OUT/corpus.txt" \
      --output "$OUT/classify.parquet"
    timed classify-ref "$r" -- $PY $REF classify "$CLASSIFIER" "$OUT/corpus.txt" "$OUT/classify-ref.npy" \
      --threads "$THREADS"
  done
  tail -n 1 "$OUT/classify-ref.out" > "$OUT/classify-ref.json"
fi
$PY $REF check "$OUT" > "$OUT/check.json"
cat "$OUT/check.json"

if has memory; then
  # The same lines (the corpus's texts of at most four words, cycled) 10,000 and 1,000,000
  # times: memory must not grow with the input. Short lines keep the long run to minutes.
  rm -f "$OUT/memory.jsonl" "$OUT/memory-raw.jsonl"
  for lines in 10000 1000000; do
    python3 -c "import itertools,sys; src=[t for t in open(sys.argv[1]).read().split('\n') if t and len(t.split()) <= 4]; \
sys.stdout.writelines(t + '\n' for t in itertools.islice(itertools.cycle(src), int(sys.argv[2])))" \
      "$OUT/corpus.txt" "$lines" > "$OUT/lines-$lines.txt"
    python3 scripts/bench_jobs.py time "$OUT/memory-raw.jsonl" "memory-$lines" 1 -- $SF --threads "$THREADS" \
      --precision int8 embed "$MODEL" --input "$OUT/lines-$lines.txt" --output "$OUT/lines-$lines.npy"
    tail -n 1 "$OUT/memory-raw.jsonl" | python3 -c "import json,sys; r=json.load(sys.stdin); \
print(json.dumps({'lines': $lines, 'peak_rss_mb': r['peak_rss_mb'], 'wall_s': r['wall_s']}))" >> "$OUT/memory.jsonl"
    rm -f "$OUT/lines-$lines.txt" "$OUT/lines-$lines.npy"
  done
fi

if has serve; then
  rm -f "$OUT/serve.jsonl"
  wait_up() { for _ in $(seq 1 300); do curl -sf "$1/health" >/dev/null && return 0; sleep 0.2; done; return 1; }
  load() { # SERVICE URL ROUND
    local c
    curl -sf -X POST "$2/v1/embed" -H 'Content-Type: application/json' -d '{"inputs": "warm up"}' >/dev/null
    for c in 1 32; do
      CORPUS=$OUT/corpus.jsonl wrk -t1 -c"$c" -d"${SERVE_SECONDS}s" --timeout 30s -s scripts/wrk_corpus.lua \
        "$2/v1/embed" | tail -n 1 | python3 -c "import json,sys; r=json.load(sys.stdin); \
r.update(service='$1', clients=$c, round=$3); print(json.dumps(r))" | tee -a "$OUT/serve.jsonl"
    done
  }
  trap 'kill ${SERVER:-0} 2>/dev/null || true' EXIT
  for r in $(seq 1 2); do
    $SF --threads "$THREADS" serve "$MODEL" --port 18090 --max-concurrent-requests 1024 \
      > "$OUT/serve.out" 2> "$OUT/serve.log" &
    SERVER=$!
    wait_up http://127.0.0.1:18090
    load slimformer http://127.0.0.1:18090 "$r"
    kill $SERVER; wait $SERVER || true
    $PY scripts/serve_reference.py "$MODEL" --port 18091 --threads "$THREADS" > "$OUT/reference.log" 2>&1 &
    SERVER=$!
    wait_up http://127.0.0.1:18091
    load reference http://127.0.0.1:18091 "$r"
    kill $SERVER; wait $SERVER || true
  done
fi
render
