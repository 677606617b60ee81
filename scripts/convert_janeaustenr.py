#!/usr/bin/env python3
"""Converts the R package janeaustenr (Debian r-cran-janeaustenr) into plain text for pretraining.

    PYTHONPATH=assets/downloads/pylib python3 scripts/convert_janeaustenr.py \
        assets/downloads/r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr \
        assets/data/raw/austen.txt

OUTPUT FORMAT (assets/data/raw/austen.txt, UTF-8, "\n" line ends):
  * one paragraph per line (the package stores one printed line per element, paragraphs separated
    by empty elements; the lines of a paragraph are joined with single spaces, whitespace runs are
    collapsed to one space);
  * documents (the six novels) are separated by exactly one empty line; no empty line at the start
    or end of the file, none inside a novel. So: a document is a maximal run of non-empty lines,
    a paragraph is one line. Sentence-order / next-sentence objectives may pair lines only within
    a document.
  * novels in publication order: Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma,
    Northanger Abbey, Persuasion (the order of janeaustenr::austen_books()).
  * removed: front matter before the first chapter heading when shorter than 60 characters (title,
    "By Jane Austen", year), chapter and volume headings ("CHAPTER IV", "Chapter 12", "VOLUME II"),
    end marks ("THE END", "Finis"), scene-break asterisks ("* * * * *"), the editor's note that
    closes Northanger Abbey ("A NOTE ON THE TEXT" and what follows), and the "_" italics marks of
    the Project Gutenberg source. Everything else is kept as is.

The package data is an R lazy-load database: data/Rdata.rdx is an RDS file (index: variable name ->
(offset, length) in data/Rdata.rdb), and each record in data/Rdata.rdb is a compressed R
serialization of one character vector. The PyPI package `rdata` parses the index and the
decompressed records (it cannot open a lazy-load database by itself). Needs `rdata` importable
(scripts/fetch-assets.sh installs it into assets/downloads/pylib); no R, no reference venv.
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import re
import struct
import sys
import warnings
import zlib
from pathlib import Path

import rdata

NOVELS = [
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
]
HEADING = re.compile(r"^(chapter|volume)\s+([ivxlc]+|\d+)\.?$", re.IGNORECASE)
END_MARK = re.compile(r"^(the end|finis)\.?$", re.IGNORECASE)
ASTERISKS = re.compile(r"^[*\s]+$")
TAIL_NOTE = "A NOTE ON THE TEXT"
FRONT_MATTER_MAX_CHARS = 60


def decompress_record(rec: bytes, compressed: int) -> bytes:
    """One .rdb record: 4-byte big-endian uncompressed length, then (per R's lazyLoadDBinsert)
    zlib data (compressed TRUE/1) or a 1-byte type ('Z' xz, '2' bzip2, '0' none) and the data (2/3)."""
    (n,) = struct.unpack(">I", rec[:4])
    if compressed in (0,):
        return rec[4:]
    if compressed == 1:
        out = zlib.decompress(rec[4:])
    else:
        kind, body = rec[4:5], rec[5:]
        if kind == b"Z":
            out = lzma.decompress(body)
        elif kind == b"2":
            out = bz2.decompress(body)
        elif kind == b"0":
            out = body
        else:
            raise ValueError(f"unknown record compression {kind!r}")
    if len(out) != n:
        raise ValueError(f"record length {len(out)} != header {n}")
    return out


def load_lazy_db(data_dir: Path) -> dict[str, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Wrong extension .rdx for file in RDS format"
        index = rdata.conversion.convert(rdata.parser.parse_file(data_dir / "Rdata.rdx"))
    compressed = int(index["compressed"][0]) if len(index["compressed"]) else 1
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (off, length) in index["variables"].items():
        raw = decompress_record(blob[int(off) : int(off) + int(length)], compressed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS" (records have no magic)
            value = rdata.conversion.convert(rdata.parser.parse_data(raw))
        out[str(name)] = ["" if v is None else str(v) for v in value]
    return out


def paragraphs(lines: list[str]) -> list[str]:
    paras, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append(" ".join(" ".join(cur).split()))
            cur = []
    return paras


def clean(paras: list[str]) -> list[str]:
    first_heading = next((i for i, p in enumerate(paras) if HEADING.match(p)), 0)
    kept = []
    for i, p in enumerate(paras):
        if p == TAIL_NOTE:
            break
        if i < first_heading and len(p) < FRONT_MATTER_MAX_CHARS:
            continue
        if HEADING.match(p) or END_MARK.match(p) or ASTERISKS.match(p):
            continue
        p = " ".join(p.replace("_", "").split())
        if p:
            kept.append(p)
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package_dir", type=Path, help="installed R package folder (with data/Rdata.rdx)")
    ap.add_argument("out", type=Path, help="output text file")
    args = ap.parse_args()

    books = load_lazy_db(args.package_dir / "data")
    missing = [n for n in NOVELS if n not in books]
    if missing:
        print(f"error: novels missing from the package: {missing}; found {sorted(books)}", file=sys.stderr)
        return 1
    docs = []
    for name in NOVELS:
        paras = clean(paragraphs(books[name]))
        words = sum(len(p.split()) for p in paras)
        print(f"{name}: {len(books[name])} lines -> {len(paras)} paragraphs, {words} words", file=sys.stderr)
        docs.append("\n".join(paras))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
