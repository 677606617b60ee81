#!/usr/bin/env python3
"""Builds the whole-job benchmark's corpus from the fetched datasets: real English texts of
every length, shuffled with a fixed seed so lengths come in no order.

    python3 scripts/make_job_corpus.py OUT_DIR [--texts 6000] [--seed 0]

Draws from Rotten Tomatoes critic snippets, SMS messages, movie dialog lines and Austen
paragraphs (from a few tokens to past 256) in the proportions below. Writes OUT_DIR/corpus.txt
(one text per line, what `slimformer embed --input` reads), OUT_DIR/corpus.jsonl
({"id", "text"}: the same texts as JSON strings, which the load generator posts) and
OUT_DIR/corpus.json (counts and sources). Needs only the standard library.
"""
import argparse
import csv
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "assets" / "data"
# Share of the corpus each source gives.
SOURCES = {"rotten_tomatoes": 0.35, "sms_spam": 0.25, "movie_dialog": 0.25, "austen": 0.15}


def clean(text: str) -> str:
    return " ".join(text.split())


def csv_texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [clean(row["text"]) for row in csv.DictReader(f)]


def load(name: str) -> list[str]:
    if name in ("rotten_tomatoes", "sms_spam"):
        texts = csv_texts(DATA / name / "train.csv")
    elif name == "movie_dialog":
        # "statement<TAB>reply": each side is a line of dialog.
        texts = [clean(side) for line in (DATA / "raw" / "movie_dialog.txt").open(encoding="utf-8")
                 for side in line.split("\t")]
    else:
        texts = [clean(line) for line in (DATA / "raw" / "austen.txt").open(encoding="utf-8")]
    return [t for t in texts if t]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--texts", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    corpus, counts = [], {}
    for name, share in SOURCES.items():
        texts = load(name)
        take = round(args.texts * share)
        if len(texts) < take:
            raise SystemExit(f"error: {name} has {len(texts)} texts, {take} needed; "
                             "run scripts/fetch-assets.sh data")
        corpus += rng.sample(texts, take)
        counts[name] = take
    rng.shuffle(corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corpus.txt").write_text("".join(t + "\n" for t in corpus), encoding="utf-8")
    with (args.out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, t in enumerate(corpus):
            f.write(json.dumps({"id": str(i), "text": t}) + "\n")
    words = sorted(len(t.split()) for t in corpus)
    summary = {"texts": len(corpus), "sources": counts, "seed": args.seed,
               "words": {"min": words[0], "median": words[len(words) // 2], "max": words[-1]}}
    (args.out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
