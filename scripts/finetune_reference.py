#!/usr/bin/env python3
"""Reference fine-tune (PyTorch + transformers, CPU) of a sequence classifier: the number to beat.

    .venv-ref/bin/python scripts/finetune_reference.py --model assets/all-MiniLM-L6-v2 \\
        --train assets/data/sms_spam/train.csv --dev assets/data/sms_spam/dev.csv \\
        --test assets/data/sms_spam/test.csv --out runs/ref-sms [--epochs 3 --lr 5e-5 --batch 32 \\
        --max-len 128 --seed 42 --threads 2] [--limit 300]

Loads DIR with AutoModelForSequenceClassification(num_labels, id2label, label2id) (for a
sentence-transformers folder the classifier head, and the BERT pooler if the checkpoint has none,
are newly initialised; the load report is printed and kept in the result). Labels are the sorted
distinct values of --label-col in the training file (index = position).

Training (a plain loop, no Trainer): texts are tokenized once (truncated to --max-len, no
padding); each epoch visits the training set in a seeded random order in batches of --batch,
padded to the longest sequence of the batch. Loss = mean cross-entropy. AdamW (betas 0.9/0.999,
eps 1e-8) with weight decay --weight-decay on all weights except biases and LayerNorm weights;
learning rate: linear warm-up from 0 over ceil(--warmup-ratio x total steps) steps (default ratio
0.1), then linear decay to 0 at the last step; gradients clipped to global norm --max-grad-norm
(1.0). Dropout as in the model config (active while training).

After each epoch the dev set is evaluated; the epoch with the best dev --select metric (default
macro_f1; ties keep the earlier epoch), or the last epoch with `--select last`, is kept and
evaluated on test. Metrics: accuracy,
macro-F1 (unweighted mean of per-class F1), MCC (multi-class form, Gorodkin 2004; equals the
binary MCC for two classes). Training throughput = training examples processed / time spent in
training steps (forward, backward, clip, optimizer and scheduler steps, batch collation; dev
evaluation excluded). wall_time_s covers everything from start to the end of the test evaluation.

Writes the result as one JSON object to stdout and to OUT/result.json, test predictions to
OUT/test_predictions.csv (text,label,prediction), and with --save-model the best model and its
tokenizer to OUT/model/. --limit N keeps only the first N rows of each split (smoke runs).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="HF checkpoint folder")
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--dev", required=True, type=Path)
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--label-col", default="label")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128, help="max tokens incl. [CLS]/[SEP] (default 128)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--warmup-ratio", type=float, default=0.1,
                    help="fraction of all optimizer steps used for linear warm-up (default 0.1)")
    ap.add_argument("--weight-decay", type=float, default=0.01,
                    help="AdamW weight decay; never applied to biases and LayerNorm weights (default 0.01)")
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default 1.0)")
    ap.add_argument("--select", choices=["accuracy", "macro_f1", "mcc", "last"], default="macro_f1",
                    help="dev metric that picks the best epoch (default macro_f1)")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--bf16", action="store_true",
                    help="mixed precision as slimformer's --precision bf16: training forward under "
                         "torch.autocast('cpu', bfloat16); weights and optimizer stay f32")
    ap.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each split")
    ap.add_argument("--save-model", action="store_true", help="also save the best model to OUT/model/")
    ap.add_argument("--out", required=True, type=Path)
    return ap.parse_args()


def read_split(path: Path, text_col: str, label_col: str, limit: int | None) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {text_col, label_col} - set(reader.fieldnames or [])
        if missing:
            sys.exit(f"error: {path} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
        rows = [(r[text_col], r[label_col]) for r in reader]
    if limit is not None:
        rows = rows[:limit]
    return [t for t, _ in rows], [l for _, l in rows]


def metrics(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> dict[str, float]:
    cm = np.zeros((num_labels, num_labels), dtype=np.float64)  # rows gold, cols pred
    np.add.at(cm, (gold, pred), 1)
    tp = np.diag(cm)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    n = cm.sum()
    t, p = cm.sum(1), cm.sum(0)  # true and predicted counts per class
    c = tp.sum()
    denom = math.sqrt((n * n - (p * p).sum()) * (n * n - (t * t).sum()))
    mcc = float((c * n - (t * p).sum()) / denom) if denom > 0 else 0.0
    return {"accuracy": float(c / n) if n else 0.0, "macro_f1": float(f1.mean()), "mcc": mcc}


def batches(encodings: list[list[int]], order: list[int], size: int, pad_id: int):
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        seqs = [encodings[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        yield idx, ids, mask


@torch.no_grad()
def predict(model, encodings, pad_id: int, batch: int) -> np.ndarray:
    model.eval()
    # Sorted by length so padding stays small; predictions are put back in input order.
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
    out = np.zeros(len(encodings), dtype=np.int64)
    for idx, ids, mask in batches(encodings, order, batch, pad_id):
        logits = model(input_ids=ids, attention_mask=mask).logits
        out[idx] = logits.argmax(-1).numpy()
    return out


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    no_decay = set()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if name.endswith("bias") or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_x, train_y = read_split(args.train, args.text_col, args.label_col, args.limit)
    dev_x, dev_y = read_split(args.dev, args.text_col, args.label_col, args.limit)
    test_x, test_y = read_split(args.test, args.text_col, args.label_col, args.limit)
    labels = sorted(set(train_y))
    label2id = {l: i for i, l in enumerate(labels)}
    unknown = (set(dev_y) | set(test_y)) - set(labels)
    if unknown:
        sys.exit(f"error: dev/test labels not in train: {sorted(unknown)}")

    # Keep what transformers says while loading (newly initialised / unused weights).
    load_log: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            load_log.append(re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()))

    tf_logger = transformers.utils.logging.get_logger("transformers")
    keep = Keep(level=logging.WARNING)
    tf_logger.addHandler(keep)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(labels),
        id2label={i: l for l, i in label2id.items()},
        label2id=label2id,
        output_loading_info=True,
    )
    tf_logger.removeHandler(keep)
    load_report = {k: sorted(map(str, v)) for k, v in info.items() if v}
    print(f"[finetune] load report: {json.dumps(load_report)}", file=sys.stderr)

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=args.max_len, padding=False)["input_ids"]

    enc_train, enc_dev, enc_test = encode(train_x), encode(dev_x), encode(test_x)
    y_train = torch.tensor([label2id[l] for l in train_y], dtype=torch.long)
    y_dev = np.array([label2id[l] for l in dev_y])
    y_test = np.array([label2id[l] for l in test_y])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    truncated = sum(len(e) >= args.max_len for e in enc_train)

    steps_per_epoch = math.ceil(len(enc_train) / args.batch)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    shuffler = torch.Generator().manual_seed(args.seed)

    history, best, best_state, train_time, seen = [], None, None, 0.0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(enc_train), generator=shuffler).tolist()
        t0 = time.perf_counter()
        loss_sum, n_batches = 0.0, 0
        for idx, ids, mask in batches(enc_train, order, args.batch, pad_id):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            n_batches += 1
            seen += len(idx)
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        dev = metrics(y_dev, predict(model, enc_dev, pad_id, args.eval_batch), len(labels))
        row = {"epoch": epoch, "train_loss": loss_sum / max(1, n_batches), "train_time_s": epoch_time,
               "train_examples_per_s": len(order) / epoch_time, **{f"dev_{k}": v for k, v in dev.items()}}
        history.append(row)
        print(f"[finetune] {json.dumps(row)}", file=sys.stderr)
        if best is None or args.select == "last" or dev[args.select] > best[args.select]:
            best = {**dev, "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    test_pred = predict(model, enc_test, pad_id, args.eval_batch)
    test = metrics(y_test, test_pred, len(labels))
    wall = time.perf_counter() - t_start

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "test_predictions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["text", "label", "prediction"])
        w.writerows(zip(test_x, test_y, (labels[i] for i in test_pred)))
    if args.save_model:
        model.save_pretrained(args.out / "model")
        tokenizer.save_pretrained(args.out / "model")

    result = {
        "model": str(args.model),
        "data": {"train": str(args.train), "dev": str(args.dev), "test": str(args.test),
                 "n_train": len(enc_train), "n_dev": len(enc_dev), "n_test": len(enc_test),
                 "limit": args.limit, "train_truncated_at_max_len": truncated},
        "labels": labels,
        "hyperparameters": {"bf16": args.bf16, "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "max_len": args.max_len,
                            "seed": args.seed, "warmup_ratio": args.warmup_ratio, "warmup_steps": warmup_steps,
                            "total_steps": total_steps, "weight_decay": args.weight_decay,
                            "max_grad_norm": args.max_grad_norm, "select": args.select},
        "load_report": load_report,
        "load_warnings": load_log,
        "epochs": history,
        "best_epoch": best["epoch"],
        "dev": {k: best[k] for k in ("accuracy", "macro_f1", "mcc")},
        "test": test,
        "train_examples_per_s": seen / train_time,
        "train_time_s": train_time,
        "wall_time_s": wall,
        "environment": {"threads": args.threads, "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "device": "cpu",
                        "cpu_count": os.cpu_count(),
                        # 1-minute load average at start and end: other processes skew throughput.
                        "loadavg_1m_start_end": [load_before[0], os.getloadavg()[0]]},
    }
    text = json.dumps(result, indent=2)
    (args.out / "result.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
