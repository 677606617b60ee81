#!/usr/bin/env bash
# Fine-tunes one model on one labelled split twice — with slimformer and with
# transformers/PyTorch (scripts/finetune_reference.py) — with the same
# hyper-parameters and seed, one after the other on the same threads, then prints
# test accuracy and training examples/s of both. Long (tens of minutes to hours on
# 2 cores): run it detached; rerunning skips finished sides and resumes slimformer's.
#
#   scripts/finetune_compare.sh                 # all-MiniLM-L6-v2 on Rotten Tomatoes, seed 42
#   SEED=1 DATA=assets/data/sms_spam scripts/finetune_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
DATA=${DATA:-assets/data/rotten_tomatoes}
SEED=${SEED:-42}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
OUT=${OUT:-runs/compare-$(basename "$DATA")-seed$SEED}
COMMON=(--epochs "$EPOCHS" --lr 5e-5 --batch 32 --max-len 128 --seed "$SEED")

scripts/fetch-assets.sh data
mkdir -p "$OUT"

if [ ! -f "$OUT/reference/result.json" ]; then
  [ -x .venv-ref/bin/python ] || scripts/setup-reference.sh
  .venv-ref/bin/python scripts/finetune_reference.py --model "$MODEL" \
    --train "$DATA/train.csv" --dev "$DATA/dev.csv" --test "$DATA/test.csv" \
    "${COMMON[@]}" --threads "$THREADS" --out "$OUT/reference" > "$OUT/reference.log" 2>&1
fi

if [ ! -f "$OUT/slimformer.json" ]; then
  cargo build --release -p slimformer-cli
  # Evaluated once per epoch, as the reference does; resumes from the last epoch.
  target/release/slimformer --threads "$THREADS" finetune "$MODEL" \
    --train "$DATA/train.csv" --dev "$DATA/dev.csv" --test "$DATA/test.csv" \
    "${COMMON[@]}" --out "$OUT/slimformer" > "$OUT/slimformer.json.part" 2> "$OUT/slimformer.log"
  mv "$OUT/slimformer.json.part" "$OUT/slimformer.json"
fi

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ref = json.load(open(f"{out}/reference/result.json"))
ours = json.loads(open(f"{out}/slimformer.json").read().strip().splitlines()[-1])
print(json.dumps({"reference": ref.get("test"), "reference_examples_per_s": ref.get("train_examples_per_s"),
                  "slimformer": ours.get("test"), "slimformer_examples_per_s": ours.get("examples_per_s")}, indent=2))
PY
