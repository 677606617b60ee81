#!/usr/bin/env python3
"""Checks that transformers loads checkpoints slimformer wrote (distilled students,
compressed models with whole-layer sharing) and computes what slimformer computes.

    .venv-ref/bin/python scripts/check_hf_load.py MODEL_DIR... [--slimformer target/release/slimformer]

For each folder: the last hidden states (and, for a classifier, the class
probabilities) of a few texts from transformers and from `slimformer encode` /
`slimformer classify`, and their largest difference; exits 1 if one is over 1e-4.
Not part of CI (it needs the reference venv from scripts/setup-reference.sh).
"""
import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

TEXTS = [
    "A gripping, beautifully shot film with a script that never quite lands.",
    "Dull.",
    "The cast is wonderful, and the ending made the whole audience cheer.",
]


def slimformer(binary, command, model):
    out = subprocess.run(
        [binary, command, model],
        input="\n".join(TEXTS) + "\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def check(binary, model_dir, tol):
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    cls = AutoModelForSequenceClassification if is_classifier else AutoModel
    model, info = cls.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    missing = [k for k in info["missing_keys"] if "position_ids" not in k]
    if missing or info["unexpected_keys"]:
        print(f"{model_dir}: missing {missing}, unexpected {info['unexpected_keys']}")
        return False
    ours = slimformer(binary, "encode", model_dir)
    worst = 0.0
    for text, row in zip(TEXTS, ours):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        hidden = out.hidden_states[-1][0]
        mine = torch.tensor(row["last_hidden_state"])
        worst = max(worst, (hidden - mine).abs().max().item())
    report = {"model": model_dir, "class": type(model).__name__, "hidden_max_diff": worst}
    if is_classifier:
        scores = slimformer(binary, "classify", model_dir)
        id2label = config.id2label
        diff = 0.0
        for text, row in zip(TEXTS, scores):
            with torch.no_grad():
                probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
            for i, p in enumerate(probs.tolist()):
                diff = max(diff, abs(p - row["scores"][id2label[i]]))
        report["scores_max_diff"] = diff
        worst = max(worst, diff)
    report["ok"] = worst <= tol
    print(json.dumps(report))
    return report["ok"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--slimformer", default="target/release/slimformer")
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    ok = all([check(args.slimformer, m, args.tol) for m in args.models])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
