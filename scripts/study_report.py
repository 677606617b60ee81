#!/usr/bin/env python3
"""Writes docs/STUDY.md from a finished `slimformer study` folder.

    study_report.py runs/study > docs/STUDY.md.part && mv docs/STUDY.md.part docs/STUDY.md

The tables are the study's own study.md; the charts are copied to docs/study/ (SVG)
so the page renders without the run folder; the machine and the command head the
page and docs/STUDY-notes.md (the reading, written by hand) closes it.
"""
import os
import platform
import re
import shutil
import sys

OUT = sys.argv[1]
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def copy_chart(match):
    src = match.group(2)
    rel = os.path.relpath(src, os.path.join(OUT, "compare"))
    dst = os.path.join(DOCS, "study", rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    return f"![{match.group(1)}](study/{rel})"


study = open(os.path.join(OUT, "study.md"), encoding="utf-8").read()
study = re.sub(r"!\[([^\]]*)\]\(([^)]+\.svg)\)", copy_chart, study)
study = study.replace("# The comparative study\n", "", 1).lstrip()
cores = os.cpu_count()
print("# The comparative study, run on this machine")
print()
print(f"`slimformer study --out {OUT}` (the default configuration; `--threads 2`), on "
      f"{cpu_model()}, {cores} cores, {platform.system()} {platform.machine()}. "
      "Every number below was measured by that run, except the last table, quoted from the papers. "
      "The real-checkpoint rows reuse the outputs of `scripts/shrink_study.sh` (docs/SHRINK.md).")
print()
print(study.rstrip())

def reference_tables():
    """slimformer's medians (the study's reports) beside PyTorch's (study_reference.sh)."""
    ref_root = os.path.join(OUT, "reference")
    if not os.path.isdir(ref_root):
        return
    import json
    print()
    print("## slimformer / PyTorch on the same checkpoints (measured)")
    print()
    print("`scripts/study_reference.sh` timed each checkpoint with PyTorch "
          "(`scripts/bench_reference.py`: transformers' AutoModel, eval, no_grad, the same "
          "synthetic shapes and threads) after the study; the slimformer times are the study's. "
          "Cells: slimformer ms / PyTorch ms (ratio; below 1 is faster). int8 checkpoints are "
          "left out (transformers cannot load that layout).")
    for name in sorted(os.listdir(ref_root)):
        report = os.path.join(OUT, "compare", name, "report.json")
        if not os.path.exists(report):
            continue
        rows = []
        shapes = []
        for m in json.load(open(report))["models"]:
            x = m.get("measurement")
            path = os.path.join(ref_root, name, f"{x['model']}.json") if x else None
            if not path or not os.path.exists(path):
                continue
            ours = {b["shape"]: b["median_ms"] for b in x["latency"]}
            theirs = {b["shape"]: b["median_ms"] for b in json.load(open(path))}
            shapes = shapes or [b["shape"] for b in x["latency"]]
            cells = []
            for sh in shapes:
                if sh in ours and sh in theirs:
                    cells.append(f"{ours[sh]:.1f} / {theirs[sh]:.1f} ({ours[sh] / theirs[sh]:.2f})")
                else:
                    cells.append("-")
            rows.append(f"| {x['model']} | " + " | ".join(cells) + " |")
        if not rows:
            continue
        print()
        print(f"**{name}**")
        print()
        print("| model | " + " | ".join(shapes) + " |")
        print("|---" * (len(shapes) + 1) + "|")
        print("\n".join(rows))


reference_tables()
try:
    print()
    print(open(os.path.join(DOCS, "STUDY-notes.md"), encoding="utf-8").read().rstrip())
except OSError:
    pass
