#!/usr/bin/env python3
"""Reference fine-tune (PyTorch + transformers, CPU) of a token classifier: the number to beat.

    .venv-ref/bin/python scripts/tagging_reference.py --model assets/all-MiniLM-L6-v2 \\
        --train DATA/train.conll --dev DATA/dev.conll --test DATA/test.conll --out runs/ref-tag \\
        [--epochs 2 --lr 5e-5 --batch 32 --max-len 128 --seed 42 --threads 2]

Data: CoNLL files, a word and its tag per line (tab- or space-separated; the tag is the last
field, so CoNLL-2003's four columns work), a blank line between sentences, -DOCSTART- skipped. Tags are the sorted distinct tags of the training file.

As transformers' token-classification example (run_ner.py): words are tokenized with
is_split_into_words=True, truncated to --max-len tokens; each word's tag goes on its first
sub-token, the rest get -100 (ignored by the loss and the scores). Training as
scripts/finetune_reference.py: seeded random order per epoch, batches padded to their longest,
AdamW (weight decay 0.01 except biases and LayerNorm), linear warm-up over 10% of the steps then
linear decay, gradients clipped to norm 1.0, dropout as the config says. After each epoch the dev
set is scored; the best epoch (entity F1 with seqeval for BIO tags, else token accuracy) is
scored on test. Writes one JSON object to stdout and OUT/result.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from seqeval.metrics import f1_score, precision_score, recall_score  # noqa: E402
from transformers import AutoModelForTokenClassification, AutoTokenizer  # noqa: E402


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            continue
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def is_span_scheme(tags) -> bool:
    spans = [t for t in tags if t != "O"]
    return bool(spans) and all(t[:2] in ("B-", "I-", "E-", "S-") for t in spans)


def encode(tokenizer, sentences, label_ids, max_len):
    examples = []
    for words, tags in sentences:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_len)
        labels, previous = [], None
        for word in enc.word_ids():
            labels.append(-100 if word is None or word == previous else label_ids[tags[word]])
            previous = word
        examples.append((enc["input_ids"], enc.get("token_type_ids"), labels))
    return examples


def collate(batch, pad_id):
    n = max(len(ids) for ids, _, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    types = torch.zeros((len(batch), n), dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for row, (i, t, l) in enumerate(batch):
        ids[row, : len(i)] = torch.tensor(i)
        mask[row, : len(i)] = 1
        if t is not None:
            types[row, : len(t)] = torch.tensor(t)
        labels[row, : len(l)] = torch.tensor(l)
    return ids, mask, types, labels


@torch.no_grad()
def evaluate(model, examples, names, batch_size, pad_id, spans):
    model.eval()
    gold, pred, loss_sum, count = [], [], 0.0, 0
    for start in range(0, len(examples), batch_size):
        ids, mask, types, labels = collate(examples[start : start + batch_size], pad_id)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        n = int((labels != -100).sum())
        loss_sum += float(out.loss) * n
        count += n
        best = out.logits.argmax(-1)
        for row in range(ids.shape[0]):
            keep = labels[row] != -100
            gold.append([names[i] for i in labels[row][keep].tolist()])
            pred.append([names[i] for i in best[row][keep].tolist()])
    flat = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
    metrics = {"accuracy": sum(g == p for g, p in flat) / max(len(flat), 1), "loss": loss_sum / max(count, 1)}
    if spans:
        metrics.update(precision=precision_score(gold, pred), recall=recall_score(gold, pred), f1=f1_score(gold, pred))
    model.train()
    return metrics


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--dev", required=True, type=Path)
    p.add_argument("--test", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()

    train, dev, test = read_conll(args.train), read_conll(args.dev), read_conll(args.test)
    names = sorted({t for _, tags in train for t in tags})
    label_ids = {n: i for i, n in enumerate(names)}
    spans = is_span_scheme(names)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label_ids)
    model.train()
    train_ex, dev_ex, test_ex = (encode(tokenizer, s, label_ids, args.max_len) for s in (train, dev, test))
    pad_id = tokenizer.pad_token_id or 0

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train_ex) / args.batch)
    total = steps_per_epoch * args.epochs
    warmup = math.ceil(0.1 * total)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)

    order_rng = random.Random(args.seed)
    best, best_state, history, train_time = None, None, [], 0.0
    primary = "f1" if spans else "accuracy"
    for epoch in range(args.epochs):
        order = list(range(len(train_ex)))
        order_rng.shuffle(order)
        t0 = time.time()
        for start in range(0, len(order), args.batch):
            ids, mask, types, labels = collate([train_ex[i] for i in order[start : start + args.batch]], pad_id)
            loss = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        train_time += time.time() - t0
        metrics = evaluate(model, dev_ex, names, args.batch, pad_id, spans)
        history.append({"epoch": epoch + 1, **metrics})
        if best is None or metrics[primary] > best[primary]:
            best, best_state = metrics, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    result = {
        "model": args.model, "labels": names, "dev": best, "history": history,
        "test": evaluate(model, test_ex, names, args.batch, pad_id, spans),
        "train_sentences": len(train_ex), "epochs": args.epochs, "lr": args.lr, "batch": args.batch,
        "seed": args.seed, "threads": args.threads,
        "examples_per_s": len(train_ex) * args.epochs / max(train_time, 1e-9),
        "wall_time_s": time.time() - started,
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
