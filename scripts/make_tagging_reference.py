"""Reference outputs for token classification, written to tests/reference/tagging.json:

- transformers' token-classification pipeline on the fixture token classifiers
  (tests/fixtures/*-tokcls, made by make_fixtures.py) with every aggregation strategy;
- seqeval's entities and micro precision/recall/F1 on seeded random tag sequences.

Run with the reference venv (scripts/setup-reference.sh):
    .venv-ref/bin/python scripts/make_tagging_reference.py
"""

import json
import random
from pathlib import Path

import transformers
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "tests" / "reference" / "tagging.json"

MODELS = ["bert-tokcls", "roberta-tokcls", "distilbert-tokcls"]
STRATEGIES = ["none", "simple", "first", "average", "max"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the curious children watch.",
    "Hello world! It costs $3.50, not 1,000,000!",
    "Transformers near the quiet river at sunset",
]


def plain(value):
    """numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def pipeline_cases():
    cases = []
    for name in MODELS:
        path = FIXTURES / name
        model = AutoModelForTokenClassification.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        for strategy in STRATEGIES:
            tagger = pipeline("token-classification", model=model, tokenizer=tokenizer,
                              aggregation_strategy=strategy, device="cpu")
            for text in TEXTS:
                cases.append({"model": name, "aggregation": strategy, "text": text,
                              "entities": plain(tagger(text))})
    return cases


def seqeval_cases():
    rng = random.Random(7)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "E-ORG", "S-LOC"]
    cases = []
    for _ in range(40):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 4))]
        # Predictions: the gold with some tags changed, so that some spans match.
        pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in s] for s in gold]
        cases.append({
            "gold": gold,
            "pred": pred,
            "gold_entities": [[list(e) for e in get_entities(s)] for s in gold],
            "precision": precision_score(gold, pred),
            "recall": recall_score(gold, pred),
            "f1": f1_score(gold, pred),
        })
    return cases


def main():
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {"transformers_version": transformers.__version__,
           "pipeline": pipeline_cases(), "seqeval": seqeval_cases()}
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(doc['pipeline'])} pipeline cases, {len(doc['seqeval'])} seqeval cases")


if __name__ == "__main__":
    main()
