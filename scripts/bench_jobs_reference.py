#!/usr/bin/env python3
"""The Python sides of the whole-job benchmark (scripts/bench_jobs.sh), each a whole job a
user would write, reading the corpus file and writing its results:

    .venv-ref/bin/python scripts/bench_jobs_reference.py st       MODEL CORPUS OUT.npy --threads 2
    .venv-ref/bin/python scripts/bench_jobs_reference.py ort      MODEL CORPUS OUT.npy --threads 2 --onnx M.onnx
    .venv-ref/bin/python scripts/bench_jobs_reference.py classify MODEL CORPUS OUT.npy --threads 2
    .venv-ref/bin/python scripts/bench_jobs_reference.py export   MODEL M.onnx
    .venv-ref/bin/python scripts/bench_jobs_reference.py check    RESULTS_DIR

st: sentence-transformers `encode(batch_size=32)`. ort: a tuned ONNX Runtime pipeline — the
fast tokenizer's batch encode, length-sorted batches of 32, mean pooling and normalization in
numpy (what fastembed and infinity do). classify: transformers' text-classification pipeline,
batch_size=32, writing each text's label scores. Each prints one JSON line with the time of
its phases (imports, load, run) in seconds; the caller times the whole process.
check: every embedding output against sentence-transformers' (cosine per text), int8/bf16
against fp32, classify label agreement, and the .parquet outputs read with pandas, polars and
DuckDB (and the .npy with numpy): prints one JSON object.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

BATCH = 32
MAX_LEN = 256  # all-MiniLM-L6-v2's max_seq_length, as sentence-transformers truncates


def read_corpus(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def save_npy(path: str, array) -> None:
    import numpy as np

    tmp = path + ".part"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))
    os.replace(tmp, path)


def report(**phases) -> None:
    phases["python_total_s"] = time.perf_counter() - T_START
    print(json.dumps(phases))


def run_st(args) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    imported = time.perf_counter()
    texts = read_corpus(args.corpus)
    model = SentenceTransformer(args.model, device="cpu")
    loaded = time.perf_counter()
    vectors = model.encode(texts, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True)
    encoded = time.perf_counter()
    save_npy(args.out, vectors)
    report(import_s=imported - T_START, load_s=loaded - imported, run_s=encoded - loaded,
           write_s=time.perf_counter() - encoded, texts=len(texts))


def export_onnx(args) -> None:
    from transformers import AutoModel

    from bench_reference import export_onnx as export_plain  # the same export as the kernel benchmark

    # Eager attention exports the pattern ONNX Runtime's optimizer fuses into one Attention op.
    model = AutoModel.from_pretrained(args.model, attn_implementation="eager").eval()
    tmp = args.out + ".part.onnx"
    export_plain(model, ["input_ids", "attention_mask", "token_type_ids"], model.config.vocab_size, Path(tmp))
    # The transformer-specific fusions (attention, GELU, layer norm, skip layer norm) that
    # ONNX Runtime's own tooling applies to BERT-like models: the "tuned" in tuned pipeline.
    from onnxruntime.transformers import optimizer

    cfg = json.load(open(Path(args.model) / "config.json"))
    fused = optimizer.optimize_model(tmp, model_type="bert", num_heads=cfg["num_attention_heads"],
                                     hidden_size=cfg["hidden_size"], opt_level=1)
    fused.save_model_to_file(args.out)
    os.remove(tmp)
    print(json.dumps({"onnx": args.out, "fused": fused.get_fused_operator_statistics()}))


def run_ort(args) -> None:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    imported = time.perf_counter()
    texts = read_corpus(args.corpus)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_LEN)
    tokenizer.no_padding()
    loaded = time.perf_counter()
    encodings = tokenizer.encode_batch(texts)  # parallel in Rust
    tokenized = time.perf_counter()
    order = np.argsort([len(e.ids) for e in encodings], kind="stable")
    hidden_size = json.loads((Path(args.model) / "config.json").read_text())["hidden_size"]
    out = np.empty((len(texts), hidden_size), dtype=np.float32)
    for start in range(0, len(order), BATCH):
        rows = order[start:start + BATCH]
        width = max(len(encodings[i].ids) for i in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            n = len(encodings[i].ids)
            ids[r, :n] = encodings[i].ids
            mask[r, :n] = 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    encoded = time.perf_counter()
    save_npy(args.out, out)
    report(import_s=imported - T_START, load_s=loaded - imported, tokenize_s=tokenized - loaded,
           run_s=encoded - loaded, write_s=time.perf_counter() - encoded, texts=len(texts),
           tokens=int(sum(len(e.ids) for e in encodings)))


def run_classify(args) -> None:
    import numpy as np
    import torch
    from transformers import pipeline

    torch.set_num_threads(args.threads)
    imported = time.perf_counter()
    texts = read_corpus(args.corpus)
    classifier = pipeline("text-classification", model=args.model, device="cpu")
    loaded = time.perf_counter()
    labels = [classifier.model.config.id2label[i] for i in range(classifier.model.config.num_labels)]
    # Truncated at the tokenizer's model_max_length (512 here), the model's position limit, as
    # `slimformer classify` truncates; MAX_LEN is sentence-transformers' limit for embeddings.
    results = classifier(texts, batch_size=BATCH, truncation=True, top_k=None)
    done = time.perf_counter()
    scores = np.array([[{r["label"]: r["score"] for r in row}[label] for label in labels] for row in results])
    save_npy(args.out, scores)
    report(import_s=imported - T_START, load_s=loaded - imported, run_s=done - loaded,
           write_s=time.perf_counter() - done, texts=len(texts), labels=labels)


def cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def run_check(args) -> None:
    import duckdb
    import numpy as np
    import pandas as pd
    import polars as pl

    d = Path(args.results)
    st = np.load(d / "st.npy")
    checks = {"texts": int(st.shape[0]), "dim": int(st.shape[1])}
    for name in ["slimformer-fp32", "slimformer-int8", "slimformer-bf16", "ort"]:
        path = d / f"{name}.npy"
        if path.exists():
            v = np.load(path)
            assert v.shape == st.shape, f"{path}: shape {v.shape}, sentence-transformers gave {st.shape}"
            c = cosines(v, st)
            checks[f"{name}_vs_st"] = {"mean": float(c.mean()), "min": float(c.min())}
    fp32 = np.load(d / "slimformer-fp32.npy")
    for name in ["slimformer-int8", "slimformer-bf16"]:
        path = d / f"{name}.npy"
        if path.exists():
            c = cosines(np.load(path), fp32)
            checks[f"{name}_vs_fp32"] = {"mean": float(c.mean()), "min": float(c.min())}
    if (d / "classify-ref.npy").exists() and (d / "classify.parquet").exists():
        ref = np.load(d / "classify-ref.npy")
        ours = pd.read_parquet(d / "classify.parquet")
        labels = json.loads((d / "classify-ref.json").read_text())["labels"]
        scores = ours[[f"score_{label}" for label in labels]].to_numpy()
        checks["classify_label_agreement"] = float((scores.argmax(1) == ref.argmax(1)).mean())
        checks["classify_max_abs_score_diff"] = float(np.abs(scores - ref).max())
    parquet = d / "embed.parquet"
    if parquet.exists():
        frame = pd.read_parquet(parquet)
        vectors = np.stack(frame["embedding"].to_numpy())
        polars_rows = pl.read_parquet(parquet).height
        duck_rows = duckdb.sql(f"select count(*) from read_parquet('{parquet}')").fetchall()[0][0]
        checks["parquet"] = {
            "pandas_rows": int(len(frame)), "polars_rows": int(polars_rows), "duckdb_rows": int(duck_rows),
            "columns": list(frame.columns),
            "max_abs_diff_to_npy": float(np.abs(vectors - fp32).max()),
        }
    print(json.dumps(checks))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ["st", "ort", "classify"]:
        s = sub.add_parser(name)
        s.add_argument("model")
        s.add_argument("corpus")
        s.add_argument("out")
        s.add_argument("--threads", type=int, default=2)
        if name == "ort":
            s.add_argument("--onnx", required=True)
    s = sub.add_parser("export")
    s.add_argument("model")
    s.add_argument("out")
    s = sub.add_parser("check")
    s.add_argument("results")
    args = p.parse_args()
    {"st": run_st, "ort": run_ort, "classify": run_classify, "export": export_onnx,
     "check": run_check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
