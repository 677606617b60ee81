#!/usr/bin/env bash
# PyTorch's latency for every checkpoint a finished `slimformer study` compared, at the
# same shapes and threads, into STUDY/reference/<comparison>/<model>.json; then
# scripts/study_report.py shows slimformer / PyTorch per row. Needs the reference venv
# (scripts/setup-reference.sh); int8 checkpoints are skipped (transformers cannot load
# slimformer's int8 layout). Nothing else should run meanwhile. Resumable.
#
#   scripts/study_reference.sh runs/study
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${1:-runs/study}
THREADS=${THREADS:-2}
[ -x .venv-ref/bin/python ] || scripts/setup-reference.sh
for report in "$STUDY"/compare/*/report.json; do
  name=$(basename "$(dirname "$report")")
  mkdir -p "$STUDY/reference/$name"
  python3 - "$report" <<'PY' |
import json, sys
for m in json.load(open(sys.argv[1]))["models"]:
    x = m.get("measurement")
    if x and not x.get("quantization"):
        print(x["model"], x["path"], ",".join(b["shape"] for b in x["latency"]))
PY
  while read -r model path shapes; do
    out="$STUDY/reference/$name/$model.json"
    [ -s "$out" ] && continue
    echo "[study-reference] $name/$model ($shapes)"
    .venv-ref/bin/python scripts/bench_reference.py "$path" --threads "$THREADS" --runs 20 \
      --shapes "$shapes" --json > "$out.part" && mv "$out.part" "$out"
  done
done
