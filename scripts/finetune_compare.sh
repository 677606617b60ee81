#!/usr/bin/env bash
# Fine-tunes one model on each task with slimformer and with transformers/PyTorch
# (scripts/finetune_reference.py), for each seed, with the same hyper-parameters, one
# run after the other on the same threads. Both sides evaluate the dev set once per
# epoch and keep the checkpoint SELECT picks (the best dev macro-F1 by default, or
# `last`: like with like). The report gives, per task, each seed's test accuracy and
# macro-F1 on both sides, each side's mean ± standard deviation over the seeds, and
# the paired difference (slimformer − reference, seed by seed) with its standard
# deviation. Long (tens of minutes per seed and side on 2 cores for Rotten
# Tomatoes): run it detached; rerunning skips finished runs and resumes slimformer's.
#
#   scripts/finetune_compare.sh                  # all-MiniLM-L6-v2; Rotten Tomatoes and SMS spam; seeds 1 2 3
#   SEEDS="1 2 3 4 5" TASKS=sms_spam SELECT=last scripts/finetune_compare.sh
#
# Writes OUT/TASK/seedN/{reference/,slimformer/,slimformer.json} and OUT/report.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-assets/all-MiniLM-L6-v2}
TASKS=${TASKS:-rotten_tomatoes sms_spam}
SEEDS=${SEEDS:-1 2 3}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
SELECT=${SELECT:-macro_f1}
OUT=${OUT:-runs/finetune-compare}
# The binary to run; a copy keeps a long comparison apart from rebuilds of target/.
SLIMFORMER=${SLIMFORMER:-target/release/slimformer}
COMMON=(--epochs "$EPOCHS" --lr 5e-5 --batch 32 --max-len 128)

scripts/fetch-assets.sh data
[ -x .venv-ref/bin/python ] || scripts/setup-reference.sh
[ "$SLIMFORMER" != target/release/slimformer ] || cargo build --release -p slimformer-cli

for task in $TASKS; do
  data=assets/data/$task
  for seed in $SEEDS; do
    run=$OUT/$task/seed$seed
    mkdir -p "$run"
    if [ ! -f "$run/reference/result.json" ]; then
      echo "finetune_compare: $task seed $seed: transformers" >&2
      .venv-ref/bin/python scripts/finetune_reference.py --model "$MODEL" \
        --train "$data/train.csv" --dev "$data/dev.csv" --test "$data/test.csv" \
        "${COMMON[@]}" --seed "$seed" --select "$SELECT" --threads "$THREADS" \
        --out "$run/reference" > "$run/reference.log" 2>&1
    fi
    if [ ! -f "$run/slimformer.json" ]; then
      echo "finetune_compare: $task seed $seed: slimformer" >&2
      # Evaluated once per epoch, as the reference is; resumes from the last epoch.
      "$SLIMFORMER" --threads "$THREADS" finetune "$MODEL" \
        --train "$data/train.csv" --dev "$data/dev.csv" --test "$data/test.csv" \
        "${COMMON[@]}" --seed "$seed" --select "$SELECT" --out "$run/slimformer" \
        > "$run/slimformer.json.part" 2> "$run/slimformer.log"
      mv "$run/slimformer.json.part" "$run/slimformer.json"
    fi
  done
done

python3 - "$OUT" "$MODEL" "$SELECT" $TASKS <<'PY'
import json, statistics, sys
from pathlib import Path

out, model, select, tasks = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]

def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

def fmt(xs):
    m, s = mean_sd(xs)
    return f"{m:.4f} ± {s:.4f}"

report, lines = {}, [f"# Fine-tuning {model}: slimformer against transformers over seeds", "",
                     f"Checkpoint kept on each side: {select}. Test metrics of that checkpoint.", ""]
for task in tasks:
    rows = []
    for seed_dir in sorted((out / task).glob("seed*"), key=lambda p: int(p.name[4:])):
        ref_file, ours_file = seed_dir / "reference/result.json", seed_dir / "slimformer.json"
        if not (ref_file.exists() and ours_file.exists()):
            continue
        ref = json.loads(ref_file.read_text())
        ours = json.loads(ours_file.read_text().strip().splitlines()[-1])
        rows.append({"seed": int(seed_dir.name[4:]),
                     "slimformer": {k: ours["test"][k] for k in ("accuracy", "macro_f1")},
                     "reference": {k: ref["test"][k] for k in ("accuracy", "macro_f1")},
                     "slimformer_examples_per_s": ours.get("examples_per_s"),
                     "reference_examples_per_s": ref.get("train_examples_per_s")})
    if not rows:
        continue
    acc = lambda side: [r[side]["accuracy"] for r in rows]  # noqa: E731
    f1 = lambda side: [r[side]["macro_f1"] for r in rows]  # noqa: E731
    diff = [a - b for a, b in zip(acc("slimformer"), acc("reference"))]
    d_mean, d_sd = mean_sd(diff)
    gap = abs(statistics.mean(acc("slimformer")) - statistics.mean(acc("reference")))
    report[task] = {"seeds": rows, "accuracy_difference_mean": d_mean, "accuracy_difference_sd": d_sd,
                    "means_within_half_a_point": gap <= 0.005}
    lines += [f"## {task}", "", "| seed | slimformer accuracy | transformers accuracy | slimformer macro-F1 | transformers macro-F1 |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['slimformer']['accuracy']:.4f} | {r['reference']['accuracy']:.4f} | "
              f"{r['slimformer']['macro_f1']:.4f} | {r['reference']['macro_f1']:.4f} |" for r in rows]
    lines += [f"| mean ± sd | **{fmt(acc('slimformer'))}** | **{fmt(acc('reference'))}** | {fmt(f1('slimformer'))} | {fmt(f1('reference'))} |",
              "", f"Paired difference in test accuracy (slimformer − transformers): {d_mean:+.4f} ± {d_sd:.4f} "
              f"over {len(rows)} seeds; the means are {100 * gap:.2f} points apart "
              f"(target ≤ 0.5: {'met' if gap <= 0.005 else 'not met'}).", ""]
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
(out / "report.md").write_text("\n".join(lines))
print("\n".join(lines))
PY
