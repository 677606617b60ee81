#!/usr/bin/env bash
# Students of a fine-tuned all-MiniLM-L6-v2 over seeds and tasks, with each addition
# to DistilBERT's recipe measured on its own:
#
#   distil3            3 teacher layers (0,2,5); soft targets, gold labels, cosine (the baseline)
#   distil3-hidden     + the hidden states of mapped layers (--alpha-hidden)
#   distil3-attention  + the attention distributions of mapped layers (--alpha-attention)
#   distil3-augment    + teacher-labelled altered copies of the training texts (--augment)
#   distil3-general    general distillation on raw text first (--corpus), then the task (--student)
#   albert             ALBERT-style: E=128, whole layers shared in 3 groups, recovered (compress)
#   albert-hidden      the same with the hidden-state and attention terms
#
# The teacher of a task is the model `slimformer finetune` made for seed 1 in
# scripts/finetune_compare.sh (fine-tuned here if missing). The report gives, per task and
# student, the test accuracy of each seed, its mean ± sd, and the mean as a share of the
# teacher's. Long: run it detached; rerunning skips the finished runs.
#
#   scripts/student_compare.sh
#   SEEDS="1 2 3" TASKS=sms_spam VARIANTS="distil3 distil3-hidden" EPOCHS=3 scripts/student_compare.sh
#
# Writes OUT/TASK/VARIANT/seedN/ (the run folders and each run's report line) and OUT/report.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-sms_spam rotten_tomatoes}
SEEDS=${SEEDS:-1 2 3}
VARIANTS=${VARIANTS:-distil3 distil3-hidden distil3-attention distil3-augment distil3-general albert albert-hidden}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
AUGMENT=${AUGMENT:-4}
GENERAL_STEPS=${GENERAL_STEPS:-600}
OUT=${OUT:-runs/student-compare}
SLIMFORMER=${SLIMFORMER:-target/release/slimformer}
BASE=assets/all-MiniLM-L6-v2

scripts/fetch-assets.sh data
[ "$SLIMFORMER" != target/release/slimformer ] || cargo build --release -p slimformer-cli
sf() { "$SLIMFORMER" --threads "$THREADS" "$@"; }

# One run: skipped when its report line exists; the line is the command's last output.
run() {
  local dir=$1
  shift
  [ -f "$dir.json" ] && return 0
  mkdir -p "$(dirname "$dir")"
  echo "student_compare: $dir" >&2
  sf "$@" --out "$dir" >"$dir.json.part" 2>"$dir.log"
  mv "$dir.json.part" "$dir.json"
}

for seed in $SEEDS; do
  # General distillation on raw text, from the base checkpoint (no task yet): once a seed.
  if [[ " $VARIANTS " == *" distil3-general "* ]]; then
    run "$OUT/general/seed$seed" distill --teacher "$BASE" --teacher-layers 0,2,5 \
      --corpus assets/data/raw/*.txt --alpha-ce 0 --alpha-mlm 0 --alpha-cos 1 --alpha-hidden 1 \
      --max-steps "$GENERAL_STEPS" --lr 1e-4 --batch 32 --max-len 128 --seed "$seed"
  fi
done

for task in $TASKS; do
  data=assets/data/$task
  # The teacher is chosen once a task (OUT/TASK/teacher.path), so every student of the
  # task learns from the same one.
  mkdir -p "$OUT/$task"
  if [ ! -f "$OUT/$task/teacher.path" ]; then
    teacher=runs/finetune-compare/$task/seed1/slimformer
    if [ ! -f "$teacher/config.json" ]; then
      teacher=$OUT/$task/teacher
      run "$teacher" finetune "$BASE" --train "$data/train.csv" --dev "$data/dev.csv" \
        --test "$data/test.csv" --epochs "$EPOCHS" --lr 5e-5 --batch 32 --max-len 128 --seed 1
    fi
    echo "$teacher" >"$OUT/$task/teacher.path"
  fi
  teacher=$(cat "$OUT/$task/teacher.path")
  [ -f "$OUT/$task/teacher-test.json" ] ||
    sf evaluate "$teacher" --data "$data/test.csv" >"$OUT/$task/teacher-test.json"
  for variant in $VARIANTS; do
    for seed in $SEEDS; do
      common=(--train "$data/train.csv" --dev "$data/dev.csv" --test "$data/test.csv"
        --epochs "$EPOCHS" --lr 5e-5 --batch 32 --max-len 128 --seed "$seed")
      distil3=(distill --teacher "$teacher" --teacher-layers 0,2,5 "${common[@]}")
      albert=(compress "$teacher" --embedding-size 128 --share all --groups 3 "${common[@]}")
      dir=$OUT/$task/$variant/seed$seed
      case $variant in
        distil3) run "$dir" "${distil3[@]}" ;;
        distil3-hidden) run "$dir" "${distil3[@]}" --alpha-hidden 1 ;;
        distil3-attention) run "$dir" "${distil3[@]}" --alpha-attention 1 ;;
        distil3-augment) run "$dir" "${distil3[@]}" --augment "$AUGMENT" ;;
        distil3-general)
          run "$dir" distill --teacher "$teacher" --student "$OUT/general/seed$seed" "${common[@]}" ;;
        albert) run "$dir" "${albert[@]}" ;;
        albert-hidden) run "$dir" "${albert[@]}" --alpha-hidden 1 --alpha-attention 1 ;;
        *) echo "student_compare: unknown variant $variant" >&2; exit 2 ;;
      esac
    done
  done
done

python3 - "$OUT" "$VARIANTS" $TASKS <<'PY'
import json, statistics, sys
from pathlib import Path

out, variants, tasks = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
lines = ["# Students of all-MiniLM-L6-v2 over seeds", "",
         "Test accuracy of each seed's best dev checkpoint; % of the teacher's test accuracy.", ""]
report = {}
for task in tasks:
    teacher_file = out / task / "teacher-test.json"
    if not teacher_file.exists():
        continue
    teacher = json.loads(teacher_file.read_text().strip().splitlines()[-1])["accuracy"]
    lines += [f"## {task} (teacher {teacher:.4f})", "",
              "| student | seeds | test accuracy, mean ± sd | % of teacher |", "|---|---|---|---|"]
    report[task] = {"teacher_accuracy": teacher, "students": {}}
    for variant in variants:
        accs = []
        for f in sorted((out / task / variant).glob("seed*.json")):
            line = json.loads(f.read_text().strip().splitlines()[-1])
            accs.append(line["test"]["accuracy"])
        if not accs:
            continue
        m = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        report[task]["students"][variant] = {"accuracies": accs, "mean": m, "sd": sd,
                                             "share_of_teacher": m / teacher}
        lines.append(f"| {variant} | {len(accs)} | {m:.4f} ± {sd:.4f} | {100 * m / teacher:.1f}% |")
    lines.append("")
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
(out / "report.md").write_text("\n".join(lines))
print("\n".join(lines))
PY
