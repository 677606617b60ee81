#!/usr/bin/env python3
"""Writes the step-by-step training parity fixtures under tests/fixtures/train-*/ with PyTorch.

Run with the reference venv (scripts/setup-reference.sh):

    .venv-ref/bin/python scripts/make_training_fixtures.py [CASE...]

Each case starts from a tiny checkpoint of tests/fixtures/ (classifier head included) with
dropout off, and fine-tunes it in PyTorch exactly as `slimformer finetune` would with the
settings in `expected.json`: the same examples in the same order (slimformer's seeded epoch
permutation, ported below), micro-batches padded to their longest text, gradient accumulation
weighting each micro-batch by its share of the step's examples, global-norm clipping as
`torch.nn.utils.clip_grad_norm_`, `torch.optim.AdamW` with decoupled weight decay and no decay on
biases and LayerNorm weights, and transformers' linear warm-up and decay. It writes

  * init/: the starting checkpoint (config.json with dropout 0, model.safetensors, tokenizer.json);
  * train.csv: the examples (text,label: one label; `|`-separated labels, possibly none, for a
    multi-label model; a number for a regression model, as the source's problem_type says), or
    train.conll (word<TAB>tag lines) for token
    classification, whose tags go on each word's first sub-token as transformers' recipe puts them;
  * expected.json: the settings, and per optimizer step the mean loss over its examples, the
    learning rate and the gradient norm before clipping;
  * final.safetensors: every weight after the last step, under transformers' names.

The tests in crates/slimformer-train/tests/train_suite/training_parity.rs
runs slimformer's trainer on the same files and compares.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import shutil
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MASK64 = (1 << 64) - 1


class SplitMix64:
    """slimformer's seeded generator (crates/slimformer/src/rng.rs)."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next_u64() % max(n, 1)

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def mix(seed: int, a: int, b: int) -> int:
    """The trainer's seed mixing (crates/slimformer-train/src/trainer.rs)."""
    return SplitMix64(seed ^ ((a * 0x9E3779B97F4A7C15) & MASK64) ^ rotl64(b, 32)).next_u64()


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    order = list(range(n))
    SplitMix64(mix(seed, 1, epoch)).shuffle(order)
    return order


def linear_schedule(peak: float, step: int, warmup: int, total: int) -> float:
    """transformers' get_linear_schedule_with_warmup, as the lr of 0-based step `step`."""
    if step < warmup:
        return peak * step / max(warmup, 1)
    return peak * max(0.0, (total - step) / max(total - warmup, 1))


def sentences(n: int, labels: list[str], seed: int) -> list[tuple[str, str]]:
    words = ("the a good bad film plot actor slow quick dull bright story scene long short "
             "funny sad music end quite very not really cast moment").split()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        rows.append((text.capitalize() + ".", labels[i % len(labels)]))
    return rows


def multi_labelled(rows: list[tuple[str, str]], labels: list[str], seed: int) -> list[tuple[str, str]]:
    """Each text with a set of labels, `|`-separated: the one it had (so every label occurs), and
    each other label with probability 1/3; some texts lose theirs and have none."""
    rng = random.Random(seed + 1)
    out = []
    for i, (text, first) in enumerate(rows):
        chosen = {first} | {l for l in labels if rng.random() < 1 / 3}
        if i % 7 == 6:
            chosen = set()
        out.append((text, "|".join(l for l in labels if l in chosen)))
    return out


def scored(rows: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Each text with a number to predict: its count of positive words less its negative ones,
    plus noise, as a decimal string."""
    rng = random.Random(seed + 2)
    good, bad = {"good", "bright", "funny", "quick"}, {"bad", "dull", "slow", "sad"}
    out = []
    for text, _ in rows:
        words = text.lower().rstrip(".").split()
        value = sum(w in good for w in words) - sum(w in bad for w in words) + rng.uniform(-0.5, 0.5)
        out.append((text, f"{value:.3f}"))
    return out


def tagged_sentences(n: int, labels: list[str], seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences of words with a tag each (any tag of the model's, in BIO order where it matters
    little: the loss sees tag ids)."""
    words = ("the a good bad film plot actor slow quick dull bright story scene long short "
             "funny sad music end quite very not really cast moment unbelievably").split()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(2, 12)
        rows.append(([rng.choice(words) for _ in range(k)], [rng.choice(labels) for _ in range(k)]))
    return rows


def decays(name: str) -> bool:
    """slimformer's rule: no decay on biases and normalization weights."""
    lower = name.lower()
    return not (lower.endswith("bias") or "layernorm" in lower or "norm" in lower)


DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
            "attention_dropout", "seq_classif_dropout")


def no_dropout(config: dict) -> dict:
    return {**config, **{k: 0.0 for k in DROPOUTS if k in config}}


def fresh_dir(name: str) -> Path:
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def padded(encodings: list, pad_id: int) -> dict:
    """A micro-batch padded to its longest text, on the right, as slimformer pads."""
    longest = max(len(e.ids) for e in encodings)
    fill = lambda row, value: row + [value] * (longest - len(row))  # noqa: E731
    return {"input_ids": torch.tensor([fill(e.ids, pad_id) for e in encodings]),
            "token_type_ids": torch.tensor([fill(e.type_ids, 0) for e in encodings]),
            "attention_mask": torch.tensor([fill([1] * len(e.ids), 0) for e in encodings])}


def train_steps(model, settings: dict, n: int, micro_batch_loss) -> list[dict]:
    """slimformer's trainer in PyTorch: `settings["max_steps"]` optimizer steps over `n` examples
    in the seeded epoch order, micro-batches of `batch` accumulated `grad_accum` at a time, each
    weighted by its share of the step's examples; global-norm clipping; AdamW with no decay on
    biases and normalization weights; linear warm-up and decay. `micro_batch_loss(indices)` is
    the mean loss of those examples. Returns per step the mean loss over its examples, the
    learning rate and the gradient norm before clipping."""
    model.train()
    named = [(n_, p) for n_, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n_, p in named if decays(n_)], "weight_decay": settings["weight_decay"]},
        {"params": [p for n_, p in named if not decays(n_)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=settings["lr"], betas=(0.9, 0.999), eps=1e-8)
    batch, accum = settings["batch"], settings["grad_accum"]
    micro_per_epoch = -(-n // batch)
    steps_per_epoch = -(-micro_per_epoch // accum)
    total = settings["max_steps"]
    warmup = int(-(-(total * settings["warmup_ratio"]) // 1))
    steps = []
    order: tuple[int, list[int]] | None = None
    for step in range(total):
        epoch, within = divmod(step, steps_per_epoch)
        if order is None or order[0] != epoch:
            order = (epoch, epoch_order(settings["seed"], epoch, n))
        perm = order[1]
        first, last = within * accum, min((within + 1) * accum, micro_per_epoch)
        ranges = [range(mb * batch, min((mb + 1) * batch, n)) for mb in range(first, last)]
        step_examples = sum(len(r) for r in ranges)
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for r in ranges:
            idx = [perm[i] for i in r]
            loss = micro_batch_loss(idx)
            assert torch.isfinite(loss), f"step {step + 1}: loss {loss.item()}"
            step_loss += loss.item() * len(idx)
            (loss * (len(idx) / step_examples)).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip"]).item()
        lr = linear_schedule(settings["lr"], step, warmup, total)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        steps.append({"step": step + 1, "loss": step_loss / step_examples, "lr": lr,
                      "grad_norm": norm})
    return steps


def write_expected(out: Path, name: str, model, settings: dict, steps: list[dict],
                   leave_out: set[str] = frozenset(), **extra) -> None:
    """final.safetensors (every weight after the last step but `leave_out`) and expected.json."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if k not in leave_out}
    save_file(state, out / "final.safetensors")
    clipped = sum(1 for s in steps if s["grad_norm"] > settings["clip"])
    expected = {"settings": settings, **extra, "steps": steps, "clipped_steps": clipped,
                "torch_version": torch.__version__}
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"{name}: {len(steps)} steps, loss {steps[0]['loss']:.4f} -> {steps[-1]['loss']:.4f}, "
          f"{clipped} steps clipped")


def labelled_rows(config: dict, settings: dict) -> list[tuple[str, str]]:
    """The texts of a sequence-classification case with labels of the model's problem type."""
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    rows = sentences(settings["examples"], labels, settings["seed"])
    problem = config.get("problem_type", "single_label_classification")
    if problem == "multi_label_classification":
        rows = multi_labelled(rows, labels, settings["seed"])
    elif problem == "regression":
        rows = scored(rows, settings["seed"])
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def make_case(name: str, source: str, settings: dict) -> None:
    out = fresh_dir(name)
    init = out / "init"
    init.mkdir()
    src = FIXTURES / source
    config = no_dropout(json.loads((src / "config.json").read_text()))
    (init / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(src / "model.safetensors", init / "model.safetensors")
    shutil.copy(src / "tokenizer.json", init / "tokenizer.json")

    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    tagging = settings.get("task") == "token-classification"
    problem = config.get("problem_type", "single_label_classification")
    if tagging:
        rows = tagged_sentences(settings["examples"], labels, settings["seed"])
        (out / "train.conll").write_text(
            "".join("".join(f"{w}\t{t}\n" for w, t in zip(*r)) + "\n" for r in rows))
    else:
        rows = labelled_rows(config, settings)
        write_csv(out / "train.csv", rows)

    torch.manual_seed(0)
    model_class = AutoModelForTokenClassification if tagging else AutoModelForSequenceClassification
    model = model_class.from_pretrained(init).float()
    tok = Tokenizer.from_file(str(init / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(settings["max_len"])
    pad_id = config.get("pad_token_id") or 0
    label_id = {name: i for i, name in enumerate(labels)}

    def micro_batch_loss(idx: list[int]) -> torch.Tensor:
        enc = [tok.encode(rows[i][0], is_pretokenized=tagging) for i in idx]
        inputs = padded(enc, pad_id)
        logits = model(**inputs).logits
        if tagging:
            # transformers' recipe: a word's tag on its first sub-token, -100 elsewhere.
            longest = inputs["input_ids"].shape[1]
            target = []
            for i, e in zip(idx, enc):
                row, previous = [], None
                for word in e.word_ids:
                    first = word is not None and word != previous
                    row.append(label_id[rows[i][1][word]] if first else -100)
                    previous = word
                target.append(row + [-100] * (longest - len(row)))
            return torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), torch.tensor(target).reshape(-1), ignore_index=-100)
        if problem == "multi_label_classification":
            # transformers' BCEWithLogitsLoss: a mean over texts and labels.
            target = torch.tensor([[float(l in rows[i][1].split("|")) for l in labels] for i in idx])
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        if problem == "regression":
            # transformers' MSELoss on the one output.
            target = torch.tensor([float(rows[i][1]) for i in idx])
            return torch.nn.functional.mse_loss(logits.squeeze(-1), target)
        target = torch.tensor([label_id[rows[i][1]] for i in idx])
        return torch.nn.functional.cross_entropy(logits, target)

    steps = train_steps(model, settings, len(rows), micro_batch_loss)
    write_expected(out, name, model, settings, steps, labels=labels)


def example_seed(seed: int, index: int) -> int:
    """The seed of an example's static mask (crates/slimformer-train/src/objectives/mlm.rs)."""
    return SplitMix64(seed ^ ((index * 0xD6E8FEB86659FD93) & MASK64)).next_u64()


def f32(x: float) -> float:
    """x rounded to float32, as a Python float (exact)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def next_f32(rng: SplitMix64) -> float:
    """slimformer's uniform draw in [0, 1): 24 random bits, exact in float32 and here."""
    return (rng.next_u64() >> 40) / float(1 << 24)


def bert_mask(ids: list[int], special: list[bool], rng: SplitMix64, mask_id: int,
              random_ids: list[int]) -> tuple[list[int], list[int]]:
    """slimformer's BERT masking of one example (token-level, 15%, 80/10/10) with draws from
    `rng`: the masked input and the labels (-100 where not predicted)."""
    select, mask_p, either_p = f32(0.15), f32(0.8), f32(f32(0.8) + f32(0.1))
    selected = [not sp and next_f32(rng) < select for sp in special]
    inputs, labels = list(ids), [-100] * len(ids)
    for i in (i for i, chosen in enumerate(selected) if chosen):
        labels[i] = ids[i]
        r = next_f32(rng)
        if r < mask_p:
            inputs[i] = mask_id
        elif r < either_p:
            inputs[i] = random_ids[rng.below(len(random_ids))]
    return inputs, labels


def static_mask(ids: list[int], special: list[bool], seed: int, index: int, mask_id: int,
                random_ids: list[int]) -> tuple[list[int], list[int]]:
    """The static mask of one example: drawn from a generator seeded by (seed, example index)."""
    return bert_mask(ids, special, SplitMix64(example_seed(seed, index)), mask_id, random_ids)


def make_pretrain_case(name: str, source: str, settings: dict) -> None:
    """BERT's pretraining objectives, masked LM and next-sentence prediction, summed as
    BertForPreTraining sums them, on sentence pairs with static masks as slimformer draws them.
    Writes init/ (a BertForPreTraining of the source's shape, torch's initialization),
    examples.jsonl (ids, type ids, special-token flags and the pair label of each example, the
    example's index its line) and expected.json / final.safetensors as the other cases."""
    from transformers import BertConfig, BertForPreTraining

    out = fresh_dir(name)
    init = out / "init"
    src = FIXTURES / source
    config = no_dropout(json.loads((src / "config.json").read_text()))
    config["architectures"] = ["BertForPreTraining"]
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_dict(config)).float()
    model.save_pretrained(init)
    shutil.copy(src / "tokenizer.json", init / "tokenizer.json")
    tok = Tokenizer.from_file(str(init / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(settings["max_len"])
    specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    random_ids = [i for i in range(config["vocab_size"]) if i not in specials]
    mask_id = tok.token_to_id("[MASK]")

    firsts = sentences(settings["examples"], ["x"], settings["seed"])
    seconds = sentences(settings["examples"], ["x"], settings["seed"] + 1)
    rng = random.Random(settings["seed"] + 3)
    encodings = [tok.encode(a, b) for (a, _), (b, _) in zip(firsts, seconds)]
    examples = [{"ids": e.ids, "type_ids": e.type_ids,
                 "special": [bool(m) for m in e.special_tokens_mask],
                 "pair_label": rng.randint(0, 1)} for e in encodings]
    (out / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    # The example's index seeds its mask.
    for index, ex in enumerate(examples):
        ex["masked"], ex["labels"] = static_mask(ex["ids"], ex["special"], settings["seed"], index,
                                                 mask_id, random_ids)
    pad_id = config.get("pad_token_id") or 0

    def micro_batch_loss(idx: list[int]) -> torch.Tensor:
        inputs = padded([encodings[i] for i in idx], pad_id)
        longest = inputs["input_ids"].shape[1]
        fill = lambda row, value: row + [value] * (longest - len(row))  # noqa: E731
        inputs["input_ids"] = torch.tensor([fill(examples[i]["masked"], pad_id) for i in idx])
        return model(**inputs,
                     labels=torch.tensor([fill(examples[i]["labels"], -100) for i in idx]),
                     next_sentence_label=torch.tensor([examples[i]["pair_label"] for i in idx])).loss

    steps = train_steps(model, settings, len(examples), micro_batch_loss)
    # The decoder is the word embeddings (tied), stored once as transformers stores it.
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    write_expected(out, name, model, {**settings, "mask_token_id": mask_id}, steps, leave_out=tied)


def make_distill_case(name: str, source: str, settings: dict) -> None:
    """Task distillation as DistilBERT's recipe and slimformer's `distill` define it: a student
    (init/student: one layer of the teacher's width, torch's initialization) learns from the
    teacher (init/teacher: the source classifier) on labelled texts, with
    α_ce·T²·KL(teacher/T ‖ student/T) (batch mean) + α_hard·cross-entropy(gold) +
    α_cos·(1 − cos) between the two last hidden states at every real token (PyTorch's
    CosineEmbeddingLoss, as DistilBERT's distiller uses it); with α_hidden and α_attention, the
    layer terms (TinyBERT's uniform map: the embeddings from the embeddings, student layer m
    from teacher layer m·N/M): the mean over mapped layers of the mean squared error of the
    hidden states at real tokens, and of KL(teacher ‖ student) between attention
    distributions, summed over keys and averaged over heads and real queries."""
    out = fresh_dir(name)
    src = FIXTURES / source
    teacher_dir, student_dir = out / "init" / "teacher", out / "init" / "student"
    teacher_dir.mkdir(parents=True)
    config = no_dropout(json.loads((src / "config.json").read_text()))
    (teacher_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(src / "model.safetensors", teacher_dir / "model.safetensors")
    shutil.copy(src / "tokenizer.json", teacher_dir / "tokenizer.json")
    # Eager attention: the fused kinds return no attention probabilities.
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_dir, attn_implementation="eager").float().eval()
    student_config = type(teacher.config).from_dict({**config, "num_hidden_layers": 1})
    student_config._attn_implementation = "eager"
    torch.manual_seed(0)
    student = AutoModelForSequenceClassification.from_config(student_config).float()
    student.save_pretrained(student_dir)
    shutil.copy(src / "tokenizer.json", student_dir / "tokenizer.json")

    rows = labelled_rows(config, settings)
    write_csv(out / "train.csv", rows)
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    label_id = {name: i for i, name in enumerate(labels)}
    tok = Tokenizer.from_file(str(teacher_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(settings["max_len"])
    pad_id = config.get("pad_token_id") or 0
    temperature, alpha_ce, alpha_hard, alpha_cos = (
        settings["temperature"], settings["alpha_ce"], settings["alpha_hard"], settings["alpha_cos"])
    alpha_hidden, alpha_attention = settings.get("alpha_hidden", 0.0), settings.get("alpha_attention", 0.0)
    n_teacher, n_student = teacher.config.num_hidden_layers, student_config.num_hidden_layers
    layer_pairs = [(0, 0)] + [(m, max(1, m * n_teacher // n_student)) for m in range(1, n_student + 1)]
    tiny = torch.finfo(torch.float32).tiny
    cosine = torch.nn.CosineEmbeddingLoss(reduction="mean")
    f = torch.nn.functional

    def micro_batch_loss(idx: list[int]) -> torch.Tensor:
        inputs = padded([tok.encode(rows[i][0]) for i in idx], pad_id)
        s = student(**inputs, output_hidden_states=True, output_attentions=True)
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        soft = f.kl_div(f.log_softmax(s.logits / temperature, dim=-1),
                        f.softmax(t.logits / temperature, dim=-1),
                        reduction="batchmean") * temperature ** 2
        hard = f.cross_entropy(s.logits, torch.tensor([label_id[rows[i][1]] for i in idx]))
        real = inputs["attention_mask"].bool()
        s_rows, t_rows = s.hidden_states[-1][real], t.hidden_states[-1][real]
        cos = cosine(s_rows, t_rows, torch.ones(s_rows.shape[0]))
        hidden = torch.stack([f.mse_loss(s.hidden_states[a][real], t.hidden_states[b][real])
                              for a, b in layer_pairs]).mean()
        # Padded keys have probability 0 on both sides: clamped, they add 0 and no gradient.
        log = lambda p: p.clamp_min(tiny).log()  # noqa: E731
        attention = torch.stack([
            (t.attentions[b - 1] * (log(t.attentions[b - 1]) - log(s.attentions[a - 1]))).sum(-1)
            .mul(real[:, None, :]).sum() / (real.sum() * s.attentions[a - 1].shape[1])
            for a, b in layer_pairs if a > 0]).mean()
        return (alpha_ce * soft + alpha_hard * hard + alpha_cos * cos
                + alpha_hidden * hidden + alpha_attention * attention)

    steps = train_steps(student, settings, len(rows), micro_batch_loss)
    write_expected(out, name, student, settings, steps, labels=labels)


def make_general_distill_case(name: str, source: str, settings: dict) -> None:
    """General distillation as `distill --corpus` defines it (DistilBERT's pretraining): a
    student masked LM (init/student: one layer of the teacher's width, torch's initialization)
    learns from the teacher masked LM (init/teacher) on raw text (corpus.txt, one text a line),
    each micro-batch's texts masked dynamically (15%, 80/10/10) from that micro-batch's own
    generator, both models reading the masked input, with α_ce·T²·KL(teacher/T ‖ student/T)
    over the masked positions (mean over them) + α_hard·cross-entropy of the original tokens
    there + α_cos·(1 − cos) between the last hidden states at every real token. As `distill`
    does, the texts are shuffled (seed ^ 0xD157) and the last 1 in 50 held out for dev."""
    from transformers import AutoModelForMaskedLM

    out = fresh_dir(name)
    src = FIXTURES / source
    teacher_dir, student_dir = out / "init" / "teacher", out / "init" / "student"
    teacher_dir.mkdir(parents=True)
    config = no_dropout(json.loads((src / "config.json").read_text()))
    (teacher_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(src / "model.safetensors", teacher_dir / "model.safetensors")
    shutil.copy(src / "tokenizer.json", teacher_dir / "tokenizer.json")
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).float().eval()
    student_config = type(teacher.config).from_dict({**config, "num_hidden_layers": 1})
    torch.manual_seed(0)
    student = AutoModelForMaskedLM.from_config(student_config).float()
    student.save_pretrained(student_dir)
    shutil.copy(src / "tokenizer.json", student_dir / "tokenizer.json")

    texts = [text for text, _ in sentences(settings["examples"], ["x"], settings["seed"])]
    (out / "corpus.txt").write_text("".join(t + "\n" for t in texts))
    order = list(range(len(texts)))
    SplitMix64(settings["seed"] ^ 0xD157).shuffle(order)
    held_out = min(max(len(texts) // 50, 1), 500, len(texts) - 1)
    train = order[:len(order) - held_out]

    tok = Tokenizer.from_file(str(teacher_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(settings["max_len"])
    encodings = [tok.encode(texts[i]) for i in train]
    specials = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    random_ids = [i for i in range(tok.get_vocab_size(with_added_tokens=True)) if i not in specials]
    mask_id = tok.token_to_id("[MASK]")
    pad_id = config.get("pad_token_id") or 0
    temperature, alpha_ce, alpha_hard, alpha_cos = (
        settings["temperature"], settings["alpha_ce"], settings["alpha_hard"], settings["alpha_cos"])
    cosine = torch.nn.CosineEmbeddingLoss(reduction="mean")
    f = torch.nn.functional
    micro_batches = itertools.count()

    def micro_batch_loss(idx: list[int]) -> torch.Tensor:
        # The trainer's micro-batches run in order, one generator each.
        rng = SplitMix64(mix(settings["seed"], 2, next(micro_batches)))
        masked = [bert_mask(encodings[i].ids, encodings[i].special_tokens_mask, rng, mask_id, random_ids)
                  for i in idx]
        inputs = padded([encodings[i] for i in idx], pad_id)
        longest = inputs["input_ids"].shape[1]
        fill = lambda row, value: row + [value] * (longest - len(row))  # noqa: E731
        inputs["input_ids"] = torch.tensor([fill(m[0], pad_id) for m in masked])
        labels = torch.tensor([fill(m[1], -100) for m in masked])
        s = student(**inputs, output_hidden_states=True)
        with torch.no_grad():
            t = teacher(**inputs, output_hidden_states=True)
        at = labels != -100
        soft = f.kl_div(f.log_softmax(s.logits[at] / temperature, dim=-1),
                        f.softmax(t.logits[at] / temperature, dim=-1),
                        reduction="batchmean") * temperature ** 2
        hard = f.cross_entropy(s.logits[at], labels[at])
        real = inputs["attention_mask"].bool()
        s_rows, t_rows = s.hidden_states[-1][real], t.hidden_states[-1][real]
        cos = cosine(s_rows, t_rows, torch.ones(s_rows.shape[0]))
        return alpha_ce * soft + alpha_hard * hard + alpha_cos * cos

    steps = train_steps(student, settings, len(train), micro_batch_loss)
    # The decoder is the word embeddings (tied), stored once as transformers stores it.
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    write_expected(out, name, student, settings, steps, leave_out=tied)


SETTINGS = {
    "examples": 22, "batch": 4, "grad_accum": 2, "max_steps": 30, "lr": 2e-3,
    "warmup_ratio": 0.1, "weight_decay": 0.01, "clip": 1.0, "seed": 7, "max_len": 32,
}


CASES = {
    "train-bert-seqcls": ("bert-seqcls", SETTINGS),
    "train-distilbert-seqcls": ("distilbert-seqcls", SETTINGS),
    "train-bert-tokcls": ("bert-tokcls", {**SETTINGS, "task": "token-classification"}),
    "train-bert-multilabel": ("bert-multilabel", SETTINGS),
    "train-bert-regression": ("bert-regression", SETTINGS),
    "train-bert-pretraining": ("bert-mlm", {**SETTINGS, "task": "pretraining"}),
    # `distill`'s default weights.
    "train-bert-distill": ("bert-seqcls", {**SETTINGS, "task": "distillation", "temperature": 2.0,
                                           "alpha_ce": 5.0, "alpha_hard": 2.0, "alpha_cos": 1.0}),
    # With the layer terms on the hidden states and the attention distributions.
    "train-bert-distill-layers": ("bert-seqcls", {**SETTINGS, "task": "distillation", "temperature": 2.0,
                                                  "alpha_ce": 5.0, "alpha_hard": 2.0, "alpha_cos": 1.0,
                                                  "alpha_hidden": 3.0, "alpha_attention": 1.0}),
    # General distillation on raw text, `distill --corpus`'s default weights.
    "train-bert-distill-general": ("bert-mlm", {**SETTINGS, "examples": 24, "task": "general-distillation",
                                                "temperature": 2.0, "alpha_ce": 5.0, "alpha_hard": 2.0,
                                                "alpha_cos": 1.0}),
}


def main() -> None:
    """Writes the cases named on the command line, or all of them."""
    import sys
    for name in sys.argv[1:] or CASES:
        source, settings = CASES[name]
        make = {"pretraining": make_pretrain_case,
                "distillation": make_distill_case,
                "general-distillation": make_general_distill_case}.get(settings.get("task"), make_case)
        make(name, source, settings)


if __name__ == "__main__":
    main()
