#!/usr/bin/env bash
# The evidence of docs/SHRINK.md: distilled, compressed and quantized versions of
# all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes, each scored on the test split and
# timed, plus the ablations and an embedding student. Hours on 2 cores: run it
# detached; every stage keeps its output and a rerun skips finished stages (and
# resumes an interrupted training run from its last checkpoint).
#
#   nohup scripts/shrink_study.sh > runs/shrink.log 2>&1 &
#   STAGES="distil3 int8" scripts/shrink_study.sh     # only some stages, in this order
#   STAGES=bench REBENCH=1 scripts/shrink_study.sh    # time everything again, side by side
#   THREADS=1 scripts/shrink_study.sh & THREADS=1 scripts/shrink_study.sh &  # two at once
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-runs/compare-rotten_tomatoes-seed42/slimformer}
BASE=${BASE:-assets/all-MiniLM-L6-v2}
DATA=${DATA:-assets/data/rotten_tomatoes}
OUT=${OUT:-runs/shrink}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-3}
EMBED_STEPS=${EMBED_STEPS:-600}
STAGES=${STAGES:-"teacher distil3 int8 albert embed ablations sharing bench"}
BIN=${BIN:-target/release/slimformer}
SF=("$BIN" --threads "$THREADS")
DATA_FLAGS=(--train "$DATA/train.csv" --dev "$DATA/dev.csv" --test "$DATA/test.csv"
            --batch 32 --max-len 128 --seed 42 --lr 5e-5)

[ -f "$TEACHER/model.safetensors" ] || { echo "no teacher at $TEACHER: run scripts/finetune_compare.sh first" >&2; exit 1; }
scripts/fetch-assets.sh data
# A BIN given from outside is used as is (a copy keeps long runs off the tree being edited).
[ "$BIN" != target/release/slimformer ] || cargo build --release -p slimformer-cli
mkdir -p "$OUT/results"
log() { echo "[shrink $(date +%H:%M:%S)] $*"; }

# Runs a command whose last stdout line is JSON into results/NAME.json, unless done.
result() {
  local name=$1; shift
  local file="$OUT/results/$name.json"
  if [ -s "$file" ]; then log "$name: done"; return; fi
  # Two study processes (say one per core, THREADS=1 each) share the work: a
  # stage another live process holds is skipped; a dead holder's lock is taken over.
  local lock="$file.lock"
  if ! mkdir "$lock" 2>/dev/null; then
    if kill -0 "$(cat "$lock/pid" 2>/dev/null)" 2>/dev/null; then log "$name: running elsewhere"; return; fi
  fi
  echo $$ > "$lock/pid"
  log "$name: $*"
  "$@" > "$file.part" 2> "$OUT/results/$name.log"
  tail -n 1 "$file.part" > "$file.part2" && mv "$file.part2" "$file" && rm -f "$file.part"
  rm -rf "$lock"
}

# Runs a training command writing to DIR; a DIR left by a run stopped before its
# first resume point (no resume/state.json) is cleared first, or the command refuses it.
fresh_or_resumed() { # DIR COMMAND...
  local dir=$1; shift
  if [ -d "$dir" ] && [ ! -f "$dir/resume/state.json" ]; then rm -rf "$dir"; fi
  "$@"
}

evaluate() { # NAME MODEL: test metrics of a classifier
  result "$1-test" "${SF[@]}" evaluate "$2" --data "$DATA/test.csv" --max-len 128
}

distil() { # NAME EPOCHS FLAGS...: task distillation from the teacher
  local name=$1 epochs=$2; shift 2
  result "$name" fresh_or_resumed "$OUT/$name" "${SF[@]}" distill --teacher "$TEACHER" "${DATA_FLAGS[@]}" \
    --epochs "$epochs" --out "$OUT/$name" "$@"
}

albert() { # NAME EPOCHS FLAGS...: compression, then recovery by distillation
  local name=$1 epochs=$2; shift 2
  result "$name" fresh_or_resumed "$OUT/$name" "${SF[@]}" compress "$TEACHER" "$@" "${DATA_FLAGS[@]}" \
    --epochs "$epochs" --out "$OUT/$name"
}

stage_teacher() {
  evaluate teacher "$TEACHER"
}
stage_distil3() {
  distil distil3 "$EPOCHS" --student-layers 3 --eval-every 160
  evaluate distil3-before "$OUT/distil3/init"
}
stage_albert() {
  albert albert-e128-all-g3 "$EPOCHS" --embedding-size 128 --share all --groups 3 --eval-every 160
  evaluate albert-e128-all-g3-before "$OUT/albert-e128-all-g3/compressed"
}
stage_int8() {
  for m in teacher:"$TEACHER" distil3:"$OUT/distil3"; do
    name=${m%%:*}; dir=${m#*:}
    [ -f "$dir/model.safetensors" ] || continue
    result "$name-int8-quantize" "${SF[@]}" quantize "$dir" --out "$OUT/$name-int8"
    evaluate "$name-int8" "$OUT/$name-int8"
  done
}
stage_bench() {
  # Timings are only comparable within one pass: REBENCH=1 redoes all of them.
  # Nothing else should run meanwhile (pause other jobs with kill -STOP). Other
  # tenants make this VM drift by ±30% within minutes, so the models take turns
  # over BENCH_ROUNDS rounds and the report takes each model's median round.
  if [ -n "${REBENCH:-}" ]; then rm -f "$OUT"/results/*-bench*.json; fi
  local models=(teacher:"$TEACHER" distil3:"$OUT/distil3" albert-e128-all-g3:"$OUT/albert-e128-all-g3"
                teacher-int8:"$OUT/teacher-int8" distil3-int8:"$OUT/distil3-int8")
  for round in $(seq 1 "${BENCH_ROUNDS:-5}"); do
    for m in "${models[@]}"; do
      name=${m%%:*}; dir=${m#*:}
      [ -f "$dir/model.safetensors" ] || continue
      # The int8 checkpoints run the int8 kernels (`--precision int8`), the rest fp32.
      precision=fp32; case $name in *-int8) precision=int8 ;; esac
      result "$name-bench-$round" "${SF[@]}" --precision "$precision" bench "$dir" \
        --shapes 1x128,32x128 --runs 20 --warmup 3 --json
    done
  done
  for m in "${models[@]}"; do
    name=${m%%:*}; dir=${m#*:}
    [ -f "$dir/model.safetensors" ] || continue
    result "$name-inspect" sh -c "'$BIN' inspect '$dir' --json | tr -d '\n'; echo"
  done
}
stage_ablations() {
  # DistilBERT's Table 4 at our scale, one epoch each against a one-epoch baseline.
  distil distil3-1ep 1 --student-layers 3
  distil distil3-1ep-no-cos 1 --student-layers 3 --alpha-cos 0
  distil distil3-1ep-no-soft 1 --student-layers 3 --alpha-ce 0
  cfg="$OUT/distil3-random-config.json"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); [c.pop(k,None) for k in ('id2label','label2id','architectures')]; json.dump(c,open(sys.argv[2],'w'))" \
    "$OUT/distil3/init/config.json" "$cfg"
  distil distil3-1ep-random-init 1 --student-config "$cfg"
}
stage_sharing() {
  albert albert-e128-all-g3-1ep 1 --embedding-size 128 --share all --groups 3
  albert albert-e128-none-1ep 1 --embedding-size 128 --share none
  albert albert-e128-attention-g3-1ep 1 --embedding-size 128 --share attention --groups 3
  albert albert-e128-ffn-g3-1ep 1 --embedding-size 128 --share ffn --groups 3
  albert albert-e128-all-g1-1ep 1 --embedding-size 128 --share all --groups 1
}
stage_embed() {
  # General distillation for embeddings: the base model (not the classifier) as
  # teacher, raw text, the cosine loss alone (no MLM head ships with the model).
  result embed3 "${SF[@]}" distill --teacher "$BASE" --student-layers 3 \
    --corpus assets/data/raw/movie_dialog.txt assets/data/raw/austen.txt \
    --alpha-ce 0 --alpha-mlm 0 --alpha-cos 1 --max-steps "$EMBED_STEPS" --eval-every 200 \
    --batch 32 --max-len 128 --lr 1e-4 --seed 42 --out "$OUT/embed3"
  if [ ! -s "$OUT/results/embed3-compare.json" ]; then
    python3 -c "import csv,sys; [print(r['text'].replace('\n',' ')) for r in csv.DictReader(open(sys.argv[1]))]" \
      "$DATA/test.csv" > "$OUT/test-texts.txt"
    "${SF[@]}" embed "$BASE" --input "$OUT/test-texts.txt" > "$OUT/embed-teacher.jsonl"
    "${SF[@]}" embed "$OUT/embed3" --input "$OUT/test-texts.txt" > "$OUT/embed-student.jsonl"
    "${SF[@]}" embed "$OUT/embed3/init" --input "$OUT/test-texts.txt" > "$OUT/embed-student-init.jsonl"
    python3 scripts/embedding_agreement.py "$OUT/embed-teacher.jsonl" "$OUT/embed-student.jsonl" \
      "$OUT/embed-student-init.jsonl" > "$OUT/results/embed3-compare.json"
  fi
}

# Stages run in the order STAGES names them.
for stage in $STAGES; do
  "stage_$stage"
  python3 scripts/shrink_report.py "$OUT" > docs/SHRINK.md.part && mv docs/SHRINK.md.part docs/SHRINK.md
done
python3 scripts/shrink_report.py "$OUT" > docs/SHRINK.md.part && mv docs/SHRINK.md.part docs/SHRINK.md
log "docs/SHRINK.md written"
