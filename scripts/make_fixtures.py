#!/usr/bin/env python3
"""Regenerates every parity fixture under tests/fixtures/ from Hugging Face transformers.

Run with the reference venv (scripts/setup-reference.sh):

    .venv-ref/bin/python scripts/make_fixtures.py [--only CASE ...]

Each case directory holds a tiny, randomly initialised HF checkpoint (config.json, weights,
tokenizer.json trained by this script) plus
  * expected.safetensors: for b in {single, pair}: b.input_ids / b.attention_mask /
    b.token_type_ids (int64 [B,L]), b.last_hidden_state (f32 [B,L,H]), for head models
    b.logits (f32), and b.pooler_output (f32 [B,H]) where the base model has a pooler;
    For xlnet-plm (head permutation_lm) b.logits are the two-stream logits for b.perm_mask
    (f32 [B,L,L]) and b.target_mapping (f32 [B,M,L]), [B,M,vocab];
  * cases.json: family, model_class, head, texts, padding side and pad token type id.
The `minilm` case (only when assets/all-MiniLM-L6-v2 exists, see scripts/fetch-assets.sh)
writes tests/fixtures/minilm/expected.json with sentence-transformers embeddings.

Everything is deterministic: tokenizers are trained on the embedded corpus, torch is seeded
per case, and the whole tests/fixtures/ tree is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    XLNetConfig,
    XLNetForSequenceClassification,
    XLNetForTokenClassification,
    XLNetLMHeadModel,
    XLNetModel,
)

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MINILM_DIR = ROOT / "assets" / "all-MiniLM-L6-v2"

MAX_POS = 64
NOISE_STD = 0.1
INIT_RANGE = 0.2
VOCAB_SIZE = 300  # target size of every trained tokenizer (Unigram may end up a bit smaller)
BPE_VOCAB_SIZE = 500  # byte-level BPE: 256 byte symbols + specials + ~240 merges

# ----------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------

SINGLE_TEXTS = [
    "Hello world!",
    "Café naïve — 東京 🚀 déjà vu",
    "It costs $3.50, not 1,000,000!",
    "Transformers",
    "The quick brown fox jumps over the lazy dog while the curious children watch "
    "from the old wooden bridge near the quiet river at sunset.",
]

PAIR_TEXTS = [
    ["How old are you?", "I am six years old."],
    ["The weather is lovely today.", "Is it going to rain tomorrow in the city?"],
]

MINILM_SENTENCES = [
    "This is an example sentence.",
    "Each sentence is converted to a dense vector.",
    "The cat sits outside on the warm wooden bridge.",
    "Café naïve — 東京 🚀 déjà vu",
    "It costs $3.50, not 1,000,000!",
]

CORPUS_PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. The dog did not seem to mind, and the fox "
    "ran off into the forest before the farmer came back from the market with fresh bread.",
    "Machine learning models learn patterns from data. A transformer encoder reads the whole "
    "sentence at once and builds a contextual representation for every token, which can then "
    "be used for classification, tagging or retrieval.",
    "In the old town there is a small café where the owner, a cheerful woman named Maria, "
    "serves coffee, tea and cakes. Students and tourists sit outside when the weather is nice "
    "and watch the boats on the river.",
    "Prices went up again this year: a loaf of bread costs $3.50, a ticket to the museum is "
    "12 euros, and the new stadium cost more than 1,000,000 dollars to build. Numbers like "
    "42, 7 and 2024 appear everywhere in the news.",
    "How old are you? I am six years old. Where do you live? We live in the city near the "
    "park, and tomorrow we will visit our grandparents in the countryside if it does not rain.",
    "Tokyo (東京) is the capital of Japan. Many travellers say déjà vu when they return to a "
    "place they loved; others prefer something naïve and new. Rockets 🚀 and stars ✨ light "
    "up the night sky above the mountains.",
    "Children were playing near the wooden bridge while their parents talked about work, "
    "music, books and sports. The sun was setting and the river was quiet and calm.",
    "Hello world! Transformers are neural networks. Attention is all you need, but layer "
    "normalization, residual connections and feed-forward blocks matter too.",
]


def corpus() -> list[str]:
    texts = list(CORPUS_PARAGRAPHS)
    texts += SINGLE_TEXTS
    texts += [t for pair in PAIR_TEXTS for t in pair]
    # repeat so that the trainers see enough frequency for merges / pieces
    return texts * 3


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ALBERT_SPECIALS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"]


def _check_specials(tok: Tokenizer, specials: list[str]) -> None:
    for i, s in enumerate(specials):
        got = tok.token_to_id(s)
        assert got == i, f"special {s} has id {got}, expected {i}"


def train_wordpiece() -> Tokenizer:
    """WordPiece vocab built by a small deterministic frequency count.

    tokenizers' WordPieceTrainer is not reproducible (its alphabet ids, and hence merge
    tie-breaks, follow Rust HashMap order, which is randomly seeded per process), so the vocab
    is chosen here: specials, every character and its ## form, then whole words and ## suffixes
    ranked by count * length (ties by token), up to VOCAB_SIZE."""
    from collections import Counter

    tok = Tokenizer(models.WordPiece(vocab={"[UNK]": 0}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for text in corpus():
        norm = tok.normalizer.normalize_str(text)
        words.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    chars = sorted({c for w in words for c in w})
    vocab = list(BERT_SPECIALS) + chars + ["##" + c for c in chars]
    cands: Counter = Counter()
    for w, n in words.items():
        if len(w) > 1:
            cands[w] += n
        for i in range(1, len(w) - 1):
            for j in range(i + 2, min(len(w), i + 5) + 1):
                cands["##" + w[i:j]] += n
    ranked = sorted(cands.items(), key=lambda kv: (-kv[1] * len(kv[0].lstrip("#")), kv[0]))
    seen = set(vocab)
    for t, _ in ranked:
        if len(vocab) >= VOCAB_SIZE:
            break
        if t not in seen:
            vocab.append(t)
            seen.add(t)
    tok.model = models.WordPiece(
        vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(BERT_SPECIALS)
    _check_specials(tok, BERT_SPECIALS)
    return tok


def train_bytelevel_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    _check_specials(tok, ROBERTA_SPECIALS)
    return tok


def train_unigram(specials: list[str], unk: str, lowercase: bool, single: str, pair: str) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    norms = [normalizers.NFKC()]
    if lowercase:
        norms.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token=unk, show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    # UnigramTrainer is not reproducible in detail: scores vary in the last bits (float sums in
    # hash order) and equally frequent pieces get scores a tiny epsilon apart in hash order.
    # Pieces whose scores lie within 1e-3 of a neighbour share one score (the cluster mean,
    # rounded), then sort by (-score, piece), so the saved model is the same on every run.
    trained = json.loads(tok.to_str())["model"]["vocab"]
    n_sp = len(specials)
    assert [p for p, _ in trained[:n_sp]] == specials
    items = sorted(trained[n_sp:], key=lambda x: -x[1])
    clusters: list[list] = []
    for p, sc in items:
        if clusters and clusters[-1][-1][1] - sc < 1e-3:
            clusters[-1].append((p, sc))
        else:
            clusters.append([(p, sc)])
    rest = []
    for cl in clusters:
        mean = round(sum(sc for _, sc in cl) / len(cl), 4)
        rest += [(p, mean) for p, _ in cl]
    rest.sort(key=lambda x: (-x[1], x[0]))
    vocab = [(p, 0.0) for p in specials] + rest
    tok.model = models.Unigram(vocab, unk_id=specials.index(unk), byte_fallback=False)
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(s, tok.token_to_id(s)) for s in specials if s in single or s in pair],
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    _check_specials(tok, specials)
    return tok


def train_albert() -> Tokenizer:
    return train_unigram(
        ALBERT_SPECIALS, "<unk>", True, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"
    )


def train_xlnet() -> Tokenizer:
    return train_unigram(
        XLNET_SPECIALS, "<unk>", False, "$A:0 <sep>:0 <cls>:2", "$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2"
    )


# family -> (tokenizer builder, pad token, padding side, pad token type id)
TOKENIZERS = {
    "wordpiece": (train_wordpiece, "[PAD]", "right", 0),
    "bpe": (train_bytelevel_bpe, "<pad>", "right", 0),
    "albert": (train_albert, "<pad>", "right", 0),
    "xlnet": (train_xlnet, "<pad>", "left", 3),
}

_TOKENIZER_CACHE: dict[str, Tokenizer] = {}


def get_tokenizer(kind: str) -> Tokenizer:
    if kind not in _TOKENIZER_CACHE:
        tok = TOKENIZERS[kind][0]()
        tok.no_padding()
        tok.no_truncation()
        _TOKENIZER_CACHE[kind] = tok
    return _TOKENIZER_CACHE[kind]


def encode_batch(tok: Tokenizer, inputs, pad_id: int, side: str, pad_type: int):
    encs = []
    for x in inputs:
        if isinstance(x, str):
            encs.append(tok.encode(x, add_special_tokens=True))
        else:
            encs.append(tok.encode(x[0], x[1], add_special_tokens=True))
    L = max(len(e.ids) for e in encs)
    assert L <= MAX_POS - 2, f"sequence too long: {L}"
    ids, mask, types = [], [], []
    for e in encs:
        n = L - len(e.ids)
        pad = ([pad_id] * n, [0] * n, [pad_type] * n)
        if side == "right":
            ids.append(list(e.ids) + pad[0])
            mask.append(list(e.attention_mask) + pad[1])
            types.append(list(e.type_ids) + pad[2])
        else:
            ids.append(pad[0] + list(e.ids))
            mask.append(pad[1] + list(e.attention_mask))
            types.append(pad[2] + list(e.type_ids))
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return t(ids), t(mask), t(types)


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

BERT_TINY = dict(
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    num_hidden_layers=2,
    max_position_embeddings=MAX_POS,
    type_vocab_size=2,
    initializer_range=INIT_RANGE,
    pad_token_id=0,
)
ROBERTA_TINY = dict(
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=64,
    num_hidden_layers=2,
    max_position_embeddings=MAX_POS + 2,
    type_vocab_size=1,
    initializer_range=INIT_RANGE,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
DISTIL_TINY = dict(
    dim=32,
    n_heads=4,
    hidden_dim=64,
    n_layers=2,
    max_position_embeddings=MAX_POS,
    initializer_range=INIT_RANGE,
    pad_token_id=0,
)
ALBERT_TINY = dict(
    hidden_size=32,
    embedding_size=16,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=MAX_POS,
    type_vocab_size=2,
    initializer_range=INIT_RANGE,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)
XLNET_TINY = dict(
    d_model=32,
    n_head=4,
    d_inner=64,
    n_layer=2,
    attn_type="bi",
    mem_len=None,
    reuse_len=None,
    use_mems_eval=False,
    use_mems_train=False,
    initializer_range=INIT_RANGE,
    pad_token_id=5,
    bos_token_id=1,
    eos_token_id=2,
)

SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}
NER = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
MULTILABEL = {0: "sports", 1: "politics", 2: "science", 3: "art"}


def labels(id2label):
    return dict(id2label={int(k): v for k, v in id2label.items()}, label2id={v: int(k) for k, v in id2label.items()})


HEADS = {
    "base": "base",
    "seqcls": "sequence_classification",
    "tokcls": "token_classification",
    "mlm": "masked_lm",
    "plm": "permutation_lm",
}

# name -> dict(family, tok, cls, config class, config kwargs, head, save)
CASES: dict[str, dict] = {}


def case(name, family, tok, cls, cfg_cls, head, save="safetensors", weights_from=None, **cfg):
    CASES[name] = dict(
        family=family, tok=tok, cls=cls, cfg_cls=cfg_cls, cfg=cfg, head=head, save=save, weights_from=weights_from
    )


# --- BERT
case("bert-base", "bert", "wordpiece", BertModel, BertConfig, "base", **BERT_TINY, hidden_act="gelu")
case("bert-pth", "bert", "wordpiece", BertModel, BertConfig, "base", save="pth", weights_from="bert-base",
     **BERT_TINY, hidden_act="gelu")
case("bert-sharded", "bert", "wordpiece", BertModel, BertConfig, "base", save="sharded", weights_from="bert-base",
     **BERT_TINY, hidden_act="gelu")
case("bert-seqcls", "bert", "wordpiece", BertForSequenceClassification, BertConfig, "seqcls",
     **BERT_TINY, hidden_act="gelu_new", num_labels=3, **labels(SENTIMENT))
case("bert-multilabel", "bert", "wordpiece", BertForSequenceClassification, BertConfig, "seqcls",
     **BERT_TINY, hidden_act="gelu", num_labels=4, problem_type="multi_label_classification", **labels(MULTILABEL))
case("bert-regression", "bert", "wordpiece", BertForSequenceClassification, BertConfig, "seqcls",
     **BERT_TINY, hidden_act="gelu", num_labels=1, problem_type="regression")
case("bert-tokcls", "bert", "wordpiece", BertForTokenClassification, BertConfig, "tokcls",
     **BERT_TINY, hidden_act="relu", num_labels=5, **labels(NER))
case("bert-mlm", "bert", "wordpiece", BertForMaskedLM, BertConfig, "mlm", **BERT_TINY, hidden_act="gelu")
for _act in ["gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "silu", "tanh"]:
    case(f"bert-act-{_act}", "bert", "wordpiece", BertModel, BertConfig, "base", **BERT_TINY, hidden_act=_act)

# --- RoBERTa
case("roberta-seqcls", "roberta", "bpe", RobertaForSequenceClassification, RobertaConfig, "seqcls",
     **ROBERTA_TINY, hidden_act="gelu", num_labels=3, **labels(SENTIMENT))
# A cross-encoder of two labels (rerank scores the second's probability).
case("roberta-rerank", "roberta", "bpe", RobertaForSequenceClassification, RobertaConfig, "seqcls",
     **ROBERTA_TINY, hidden_act="gelu", num_labels=2, id2label={0: "not_relevant", 1: "relevant"},
     label2id={"not_relevant": 0, "relevant": 1})
case("roberta-tokcls", "roberta", "bpe", RobertaForTokenClassification, RobertaConfig, "tokcls",
     **ROBERTA_TINY, hidden_act="gelu_new", num_labels=5, **labels(NER))
case("roberta-mlm", "roberta", "bpe", RobertaForMaskedLM, RobertaConfig, "mlm", **ROBERTA_TINY, hidden_act="gelu")

# --- DistilBERT
case("distilbert-seqcls", "distilbert", "wordpiece", DistilBertForSequenceClassification, DistilBertConfig,
     "seqcls", **DISTIL_TINY, activation="gelu", num_labels=3, **labels(SENTIMENT))
case("distilbert-tokcls", "distilbert", "wordpiece", DistilBertForTokenClassification, DistilBertConfig,
     "tokcls", **DISTIL_TINY, activation="relu", num_labels=5, **labels(NER))
case("distilbert-mlm", "distilbert", "wordpiece", DistilBertForMaskedLM, DistilBertConfig, "mlm",
     **DISTIL_TINY, activation="gelu")

# --- ALBERT (parameter-sharing layouts)
case("albert-shared", "albert", "albert", AlbertForSequenceClassification, AlbertConfig, "seqcls",
     **ALBERT_TINY, num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1, hidden_act="gelu_new",
     num_labels=3, **labels(SENTIMENT))
case("albert-groups", "albert", "albert", AlbertForMaskedLM, AlbertConfig, "mlm",
     **ALBERT_TINY, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=1, hidden_act="gelu_new")
case("albert-inner", "albert", "albert", AlbertForTokenClassification, AlbertConfig, "tokcls",
     **ALBERT_TINY, num_hidden_layers=2, num_hidden_groups=1, inner_group_num=2, hidden_act="gelu",
     num_labels=5, **labels(NER))
case("albert-groups-inner", "albert", "albert", AlbertModel, AlbertConfig, "base",
     **ALBERT_TINY, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, hidden_act="gelu_new")

# --- XLNet
case("xlnet-base", "xlnet", "xlnet", XLNetModel, XLNetConfig, "base", **XLNET_TINY, clamp_len=-1,
     ff_activation="gelu")
case("xlnet-seqcls", "xlnet", "xlnet", XLNetForSequenceClassification, XLNetConfig, "seqcls", **XLNET_TINY,
     clamp_len=-1, ff_activation="gelu", summary_type="last", summary_use_proj=True, summary_activation="tanh",
     num_labels=3, **labels(SENTIMENT))
case("xlnet-tokcls", "xlnet", "xlnet", XLNetForTokenClassification, XLNetConfig, "tokcls", **XLNET_TINY,
     clamp_len=-1, ff_activation="relu", num_labels=5, **labels(NER))
case("xlnet-clamp", "xlnet", "xlnet", XLNetModel, XLNetConfig, "base", **XLNET_TINY, clamp_len=3,
     ff_activation="gelu")
# Permutation LM (two-stream attention): b.logits are XLNetLMHeadModel's with b.perm_mask and
# b.target_mapping, [B, num_predict, vocab]; see plm_inputs.
case("xlnet-plm", "xlnet", "xlnet", XLNetLMHeadModel, XLNetConfig, "plm", **XLNET_TINY, clamp_len=-1,
     ff_activation="gelu")


# ----------------------------------------------------------------------------------------------
# Model building
# ----------------------------------------------------------------------------------------------

XLNET_EXTRA = ("r_w_bias", "r_r_bias", "r_s_bias", "seg_embed", "mask_emb")


def case_seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@torch.no_grad()
def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Adds N(0, NOISE_STD) noise to LayerNorm weights/biases, every bias and XLNet extras, so that
    no parameter keeps a trivial init (ones / zeros) and every one of them affects the outputs."""
    seen = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            is_norm = isinstance(module, torch.nn.LayerNorm)
            if is_norm or p_name.endswith("bias") or p_name in XLNET_EXTRA:
                seen.add(id(p))
                p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)


def build_model(name: str, spec: dict, vocab_size: int):
    torch.manual_seed(case_seed(name))
    cfg = spec["cfg_cls"](vocab_size=vocab_size, **spec["cfg"])
    cfg._attn_implementation = "eager"
    model = spec["cls"](cfg)
    gen = torch.Generator().manual_seed(case_seed(name) + 1)
    perturb(model, gen)
    model.eval()
    return model


def load_model(spec: dict, path: Path):
    try:
        m = spec["cls"].from_pretrained(path, attn_implementation="eager")
    except (ValueError, TypeError):
        m = spec["cls"].from_pretrained(path)
    m.eval()
    return m


@torch.no_grad()
def run_model(model, family: str, ids, mask, types):
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if family != "distilbert":
        kwargs["token_type_ids"] = types
    out = model(**kwargs, output_hidden_states=True, return_dict=True)
    base_out = model.base_model(**kwargs, return_dict=True)
    lhs = base_out.last_hidden_state if hasattr(base_out, "last_hidden_state") else base_out[0]
    # hidden_states[-1] must agree with the base model output
    assert torch.equal(out.hidden_states[-1], lhs), "hidden_states[-1] != base model output"
    logits = getattr(out, "logits", None)
    pooled = getattr(base_out, "pooler_output", None)
    return (
        lhs.float().contiguous(),
        logits.float().contiguous() if logits is not None else None,
        pooled.float().contiguous() if pooled is not None else None,
    )


def save_checkpoint(model, spec: dict, out: Path) -> None:
    if spec["save"] == "safetensors":
        model.save_pretrained(out)
    elif spec["save"] == "sharded":
        model.save_pretrained(out, max_shard_size="40KB")
        shards = sorted(out.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2 and (out / "model.safetensors.index.json").exists(), shards
    elif spec["save"] == "pth":
        model.config.save_pretrained(out)
        torch.save(model.state_dict(), out / "pytorch_model.bin")
    else:
        raise ValueError(spec["save"])


def plm_inputs(tok: Tokenizer, ids, mask, seed: int):
    """perm_mask [B,L,L] and target_mapping [B,M,L] as slimformer's plm.rs builds them: per example
    a factorization order with <sep>/<cls> first and the other real tokens shuffled; the last
    max(1, n // 6) are the targets; perm_mask[i, j] = 1 when rank(j) >= rank(i) (padding rows: all 1)."""
    gen = torch.Generator().manual_seed(seed)
    specials = {tok.token_to_id("<sep>"), tok.token_to_id("<cls>")}
    b, l = ids.shape
    perm = torch.ones(b, l, l)
    targets = []
    for e in range(b):
        real = [i for i in range(l) if mask[e, i] == 1]
        spec = [i for i in real if int(ids[e, i]) in specials]
        rest = [i for i in real if int(ids[e, i]) not in specials]
        order = spec + [rest[k] for k in torch.randperm(len(rest), generator=gen).tolist()]
        rank = {p: r for r, p in enumerate(order)}
        for i in real:
            for j in range(l):
                perm[e, i, j] = 1.0 if (j not in rank or rank[j] >= rank[i]) else 0.0
        targets.append(order[len(order) - max(1, len(rest) // 6):])
    mapping = torch.zeros(b, max(len(t) for t in targets), l)
    for e, t in enumerate(targets):
        for k, p in enumerate(t):
            mapping[e, k, p] = 1.0
    return perm, mapping


def human(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def make_case(name: str, spec: dict, built: dict) -> dict:
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok = get_tokenizer(spec["tok"])
    _, pad_tok, side, pad_type = TOKENIZERS[spec["tok"]]
    pad_id = tok.token_to_id(pad_tok)
    tok.save(str(out / "tokenizer.json"))
    tok_file = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok_file.padding is None and tok_file.truncation is None

    if spec["weights_from"]:
        model = built[spec["weights_from"]]
    else:
        model = build_model(name, spec, tok.get_vocab_size(with_added_tokens=True))
    built[name] = model
    save_checkpoint(model, spec, out)

    # Reference outputs come from the checkpoint as reloaded from disk, and must match the
    # in-memory model (catches tied / dropped weights).
    reloaded = load_model(spec, out)
    family = spec["family"]
    tensors = {}
    max_logit = 0.0
    for bname, inputs in (("single", SINGLE_TEXTS), ("pair", PAIR_TEXTS)):
        ids, mask, types = encode_batch(tok_file, inputs, pad_id, side, pad_type)
        lhs, logits, pooled = run_model(reloaded, family, ids, mask, types)
        lhs_mem, logits_mem, _ = run_model(model, family, ids, mask, types)
        assert torch.allclose(lhs, lhs_mem, atol=1e-6), f"{name}: reload mismatch"
        if logits is not None:
            assert torch.allclose(logits, logits_mem, atol=1e-6), f"{name}: reload mismatch (logits)"
        tensors[f"{bname}.input_ids"] = ids.contiguous()
        tensors[f"{bname}.attention_mask"] = mask.contiguous()
        tensors[f"{bname}.token_type_ids"] = types.contiguous()
        tensors[f"{bname}.last_hidden_state"] = lhs
        if pooled is not None:  # extra: BERT/ALBERT pooler (dense + tanh on token 0), when the model has one
            tensors[f"{bname}.pooler_output"] = pooled
        if spec["head"] == "plm":
            perm, mapping = plm_inputs(tok_file, ids, mask, case_seed(name) + 2)
            with torch.no_grad():
                kwargs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                              perm_mask=perm, target_mapping=mapping)
                logits = reloaded(**kwargs).logits.float().contiguous()
                assert torch.allclose(logits, model(**kwargs).logits, atol=1e-6), f"{name}: reload mismatch"
            tensors[f"{bname}.perm_mask"] = perm.contiguous()
            tensors[f"{bname}.target_mapping"] = mapping.contiguous()
        if logits is not None:
            tensors[f"{bname}.logits"] = logits
            max_logit = max(max_logit, logits.abs().max().item())
        else:
            max_logit = max(max_logit, lhs.abs().max().item())
    save_file(tensors, str(out / "expected.safetensors"))

    meta = {
        "family": family,
        "model_class": spec["cls"].__name__,
        "head": HEADS[spec["head"]],
        "single": SINGLE_TEXTS,
        "pair": PAIR_TEXTS,
        "padding_side": side,
        "pad_token_type_id": pad_type,
        "pad_token_id": pad_id,
        "weights": spec["save"],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (out / "cases.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    files = sorted(p for p in out.rglob("*") if p.is_file())
    return dict(
        case=name,
        params=sum(p.numel() for p in model.parameters()),
        files=len(files),
        size=sum(p.stat().st_size for p in files),
        max_abs=max_logit,
        has_logits="single.logits" in tensors,
    )


def make_minilm() -> dict | None:
    if not (MINILM_DIR / "config.json").exists():
        print(f"[make_fixtures] skipping minilm: {MINILM_DIR} missing (run scripts/fetch-assets.sh)")
        return None
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(MINILM_DIR), device="cpu")
    emb = st.encode(MINILM_SENTENCES, normalize_embeddings=True, convert_to_numpy=True, batch_size=8)
    input_ids = [st.tokenizer(s)["input_ids"] for s in MINILM_SENTENCES]
    out = FIXTURES / "minilm"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (assets/all-MiniLM-L6-v2)",
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": st.max_seq_length,
        "sentences": MINILM_SENTENCES,
        "embeddings": [[float(x) for x in row] for row in emb.astype("float32")],
        "input_ids": input_ids,
    }
    (out / "expected.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n")
    size = (out / "expected.json").stat().st_size
    return dict(case="minilm", params=sum(p.numel() for p in st.parameters()), files=1, size=size,
                max_abs=float(abs(emb).max()), has_logits=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="regenerate only these cases (default: all, wiping tests/fixtures)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    names = list(CASES)
    if args.only:
        unknown = set(args.only) - set(CASES) - {"minilm"}
        if unknown:
            sys.exit(f"unknown cases: {sorted(unknown)}")
        names = [n for n in names if n in args.only]
        # weight sharing: bert-pth / bert-sharded need bert-base built first
        for n in list(names):
            src = CASES[n]["weights_from"]
            if src and src not in names:
                names.insert(0, src)
    elif FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    built: dict = {}
    rows = [make_case(n, CASES[n], built) for n in names]
    if not args.only or "minilm" in args.only:
        r = make_minilm()
        if r:
            rows.append(r)

    print(f"\ntransformers {transformers.__version__}, torch {torch.__version__}")
    print(f"{'case':<26} {'params':>9} {'files':>5} {'size':>11} {'max|logit|':>11}")
    for r in rows:
        ml = f"{r['max_abs']:.4f}" + ("" if r["has_logits"] else "*")
        print(f"{r['case']:<26} {r['params']:>9} {r['files']:>5} {human(r['size']):>11} {ml:>11}")
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print("(* = no logits: max |last_hidden_state| / max |embedding| instead)")
    print(f"total tests/fixtures size: {human(total)} ({total} bytes)")


if __name__ == "__main__":
    main()
