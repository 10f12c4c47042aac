"""Tiny offline teachers for tests and fault campaigns: a word-piece tokenizer, models built from configs, and
small split files. One home, so tests/conftest.py and benchmarks/reliability build exactly the same fixtures."""

from __future__ import annotations

import csv
import random
import string
from pathlib import Path

import torch

WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "movie",
    "food",
    "the",
    "was",
    "not",
    "very",
    "ok",
    "meh",
    "love",
    "hate",
    "service",
    "and",
    "but",
    "really",
    "fine",
    "day",
]
LABELS = ["negative", "neutral", "positive"]


def write_vocab(path: Path) -> Path:
    """A word-piece vocabulary: specials, WORDS, and letters and digits so any text tokenizes offline."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase] + list("0123456789.,!?'#@")
    path.write_text("\n".join(specials + WORDS + pieces) + "\n")
    return path


def make_tokenizer(directory: Path):
    """A BERT tokenizer over `write_vocab`, saved to `directory` (no download)."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = write_vocab(directory / "vocab.txt")
    vocab = {w: i for i, w in enumerate(vocab_file.read_text().split())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(directory)
    return tok


def make_model(
    directory: Path,
    head: str = "sequence",
    num_labels: int = 3,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    vocab_size: int | None = None,
    id2label: dict | None = None,
) -> Path:
    """Save a randomly initialised tiny model (+ tokenizer) the way a user's fine-tuned teacher would be."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    tok = make_tokenizer(directory)
    if head == "causal":
        config = LlamaConfig(
            vocab_size=vocab_size or len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=tok.pad_token_id,
            max_position_embeddings=128,
        )
        model = LlamaForCausalLM(config)
    else:
        config = BertConfig(
            vocab_size=vocab_size or len(tok),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=128,
            num_labels=num_labels,
        )
        if id2label:
            config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
        model = BertForMaskedLM(config) if head == "mlm" else BertForSequenceClassification(config)
    model.eval()
    model.save_pretrained(directory)
    return directory


def random_text(rng: random.Random) -> str:
    """1-14 words of WORDS: short rows that every tiny model reads quickly."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))


def write_split(path: Path, n: int, seed: int, pair: bool = False, label_kind: str = "names") -> Path:
    """A seeded CSV split of `n` rows: text, text2 (when `pair`), label (LABELS names or "0".."2"), score."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["text", "text2", "label", "score"])
        for i in range(n):
            label = LABELS[i % 3] if label_kind == "names" else str(i % 3)
            w.writerow([random_text(rng), random_text(rng) if pair else "", label, f"{rng.uniform(0, 5):.3f}"])
    return path
