#!/usr/bin/env python3
"""Reference timings of an encoder forward pass (PyTorch or ONNX Runtime, CPU, fp32).

    .venv-ref/bin/python scripts/bench_reference.py assets/all-MiniLM-L6-v2 \
        [--threads 2] [--runs 20] [--warmup 5] [--json] [--engine pytorch|onnxruntime]

Times AutoModel's forward (eval, no_grad) on fixed synthetic token ids (seeded, drawn from a
range below the vocab size, attention mask all ones, token types all zero) for batch x length
1x16, 1x128 and 32x128; reports median and p95 wall time over --runs runs after --warmup runs.
With --json prints a JSON array of
  {"engine","shape","precision","threads","median_ms","p95_ms","runs"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = [(1, 16), (1, 128), (32, 128)]
SEED = 1234


def synthetic_inputs(vocab_size: int, batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED + batch * 1000 + length)
    hi = min(vocab_size, 2000)
    lo = min(1000, hi // 2)  # "1000-ish" ids, clear of the special tokens at the start of the vocab
    ids = rng.integers(lo, hi, size=(batch, length), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def time_fn(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def load_model(model_dir: str):
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    except (ValueError, TypeError):
        model = AutoModel.from_pretrained(model_dir)
    model.eval()
    model.float()
    return model


def accepted_inputs(model) -> list[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]


def bench_pytorch(model, names, vocab, args) -> list[dict]:
    rows = []
    for b, l in args.shapes:
        feed = {k: torch.from_numpy(v) for k, v in synthetic_inputs(vocab, b, l).items() if k in names}

        def fn():
            with torch.no_grad():
                model(**feed)

        rows.append(row("pytorch", b, l, args, time_fn(fn, args.runs, args.warmup)))
    return rows


def export_onnx(model, names, vocab, path: Path) -> None:
    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            out = self.m(**dict(zip(names, xs)), return_dict=True)
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    example = synthetic_inputs(vocab, 2, 16)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["last_hidden_state"] = {0: "batch", 1: "sequence"}
    kwargs = dict(
        input_names=list(names),
        output_names=["last_hidden_state"],
        dynamic_axes=dynamic,
        opset_version=17,
    )
    wrapped = Wrapper(model).eval()
    errors = []
    # The legacy TorchScript exporter needs no extra packages; the dynamo exporter needs onnxscript.
    for dynamo in (False, True):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, args, str(path), dynamo=dynamo, **kwargs)
            return
        except Exception as e:  # noqa: BLE001
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise RuntimeError("; ".join(errors))


def bench_onnxruntime(model, names, vocab, args) -> list[dict]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            export_onnx(model, names, vocab, path)
        except Exception as e:  # noqa: BLE001
            sys.exit(
                f"error: ONNX export failed, no onnxruntime timings: {e}\n"
                "hint: torch.onnx.export needs the `onnx` package (legacy exporter) or `onnx` + "
                "`onnxscript` (dynamo exporter) in the reference venv"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        onnx_names = [i.name for i in sess.get_inputs()]
        # sanity check against PyTorch
        check = synthetic_inputs(vocab, 2, 16)
        got = sess.run(None, {k: check[k] for k in onnx_names})[0]
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(check[k]) for k in names}).last_hidden_state.numpy()
        diff = float(np.abs(got - ref).max())
        if diff > 1e-3:
            print(f"warning: onnxruntime output differs from PyTorch by {diff:.2e}", file=sys.stderr)
        rows = []
        for b, l in args.shapes:
            inputs = synthetic_inputs(vocab, b, l)
            feed = {k: inputs[k] for k in onnx_names}
            rows.append(row("onnxruntime", b, l, args, time_fn(lambda: sess.run(None, feed), args.runs, args.warmup)))
        return rows


def row(engine: str, b: int, l: int, args, times: list[float]) -> dict:
    return {
        "engine": engine,
        "shape": f"{b}x{l}",
        "precision": "fp32",
        "threads": args.threads,
        "median_ms": round(statistics.median(times), 4),
        "p95_ms": round(percentile(times, 95), 4),
        "runs": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--engine", choices=["pytorch", "onnxruntime"], default="pytorch")
    ap.add_argument("--shapes", default=",".join(f"{b}x{l}" for b, l in SHAPES),
                    help="batch x length, comma-separated (default: %(default)s)")
    args = ap.parse_args()
    try:
        args.shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    except ValueError:
        ap.error(f"--shapes {args.shapes!r}: expected e.g. 1x16,1x128,32x128")
    if args.runs < 20:
        ap.error("--runs must be at least 20")
    if not (Path(args.model_dir) / "config.json").exists():
        ap.error(f"{args.model_dir}: no config.json (run scripts/fetch-assets.sh?)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    model = load_model(args.model_dir)
    vocab = model.config.vocab_size
    names = accepted_inputs(model)
    if args.engine == "pytorch":
        rows = bench_pytorch(model, names, vocab, args)
    else:
        rows = bench_onnxruntime(model, names, vocab, args)

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.model_dir}  ({type(model).__name__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__})")
    print(f"{'engine':<12} {'shape':>7} {'prec':>5} {'thr':>4} {'median ms':>10} {'p95 ms':>10} {'runs':>5}")
    for r in rows:
        print(f"{r['engine']:<12} {r['shape']:>7} {r['precision']:>5} {r['threads']:>4} "
              f"{r['median_ms']:>10.3f} {r['p95_ms']:>10.3f} {r['runs']:>5}")


if __name__ == "__main__":
    main()
