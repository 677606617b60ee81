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
try:
    print()
    print(open(os.path.join(DOCS, "STUDY-notes.md"), encoding="utf-8").read().rstrip())
except OSError:
    pass
