#!/usr/bin/env bash
# Named-entity tagging on CoNLL-2003 English: slimformer's finetune --task token-classification
# against transformers' recipe (scripts/tagging_reference.py), same data, same settings, over seeds.
#
#   scripts/ner_compare.sh [TRAIN_SENTENCES] [DEV_SENTENCES]     (defaults 4000 and 1000)
#   SEEDS ("1 2 3"), EPOCHS (2), LR (5e-5), BATCH (32), THREADS (2), OUT (runs/ner-compare)
# Data: scripts/fetch-assets.sh ner. The first TRAIN_SENTENCES of train, the first DEV_SENTENCES
# of valid, all of test (3,453 sentences). Needs the reference venv (scripts/setup-reference.sh).
# Writes OUT/report.md: entity F1 (seqeval) on test per seed, each side's mean ± sd and the paired
# difference.
set -euo pipefail
cd "$(dirname "$0")/.."
train_n=${1:-4000}
dev_n=${2:-1000}
seeds=${SEEDS:-1 2 3}
epochs=${EPOCHS:-2}
lr=${LR:-5e-5}
batch=${BATCH:-32}
threads=${THREADS:-2}
out=${OUT:-runs/ner-compare}
data=assets/data/conll2003
model=assets/all-MiniLM-L6-v2
py=.venv-ref/bin/python
[ -s "$data/train.conll" ] || { echo "ner_compare: $data missing (scripts/fetch-assets.sh ner)" >&2; exit 2; }
[ -x "$py" ] || { echo "ner_compare: $py missing (scripts/setup-reference.sh)" >&2; exit 2; }
cargo build --release -q -p slimformer-cli
bin=target/release/slimformer
mkdir -p "$out"

# The first N sentences of a CoNLL file (document separators left out).
first_sentences() {
  awk -v n="$2" 'BEGIN { RS = ""; ORS = "\n\n" } $1 != "-DOCSTART-" && kept < n { print; kept++ }' "$1"
}
first_sentences "$data/train.conll" "$train_n" > "$out/train.conll"
first_sentences "$data/dev.conll" "$dev_n" > "$out/dev.conll"
first_sentences "$data/test.conll" 1000000 > "$out/test.conll"

for seed in $seeds; do
  if [ ! -s "$out/ours-$seed.json" ]; then
    "$bin" --threads "$threads" finetune "$model" --task token-classification \
      --train "$out/train.conll" --dev "$out/dev.conll" --test "$out/test.conll" \
      --epochs "$epochs" --lr "$lr" --batch "$batch" --max-len 128 --seed "$seed" \
      --out "$out/ours-$seed" --overwrite > "$out/ours-$seed.json.tmp"
    mv "$out/ours-$seed.json.tmp" "$out/ours-$seed.json"
  fi
  if [ ! -s "$out/reference-$seed.json" ]; then
    "$py" scripts/tagging_reference.py --model "$model" --train "$out/train.conll" \
      --dev "$out/dev.conll" --test "$out/test.conll" --epochs "$epochs" --lr "$lr" \
      --batch "$batch" --max-len 128 --seed "$seed" --threads "$threads" \
      --out "$out/reference-$seed" > "$out/reference-$seed.json.tmp"
    mv "$out/reference-$seed.json.tmp" "$out/reference-$seed.json"
  fi
done

"$py" - "$out" $seeds <<'PY'
import json, statistics, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
ours = [json.loads((out / f"ours-{s}.json").read_text()) for s in seeds]
ref = [json.loads((out / f"reference-{s}.json").read_text()) for s in seeds]
def ms(xs):
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"
rows = ["| seed | slimformer test F1 | transformers test F1 | slimformer token acc. | transformers token acc. |", "|---|---|---|---|---|"]
for s, o, r in zip(seeds, ours, ref):
    rows.append(f"| {s} | {o['test']['f1']:.4f} | {r['test']['f1']:.4f} | {o['test']['accuracy']:.4f} | {r['test']['accuracy']:.4f} |")
f_o = [o["test"]["f1"] for o in ours]; f_r = [r["test"]["f1"] for r in ref]
diff = [a - b for a, b in zip(f_o, f_r)]
rows.append(f"| mean ± sd | {ms(f_o)} | {ms(f_r)} | {ms([o['test']['accuracy'] for o in ours])} | {ms([r['test']['accuracy'] for r in ref])} |")
text = "\n".join(rows) + f"\n\nPaired difference (slimformer − transformers) in test F1: {ms(diff)}.\n"
text += f"Training examples/s: slimformer {ms([o['examples_per_s'] for o in ours])}, transformers {ms([r['examples_per_s'] for r in ref])}.\n"
(out / "report.md").write_text(text)
print(text)
PY
