"""Tiny offline fixtures: a word-piece tokenizer, teachers built from configs, and small split files."""

from __future__ import annotations

import csv
import json
import random
import string
from pathlib import Path

import pytest
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
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase] + list("0123456789.,!?'#@")
    path.write_text("\n".join(specials + WORDS + pieces) + "\n")
    return path


def make_tokenizer(directory: Path):
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
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))


def write_split(path: Path, n: int, seed: int, pair: bool = False, label_kind: str = "names") -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["text", "text2", "label", "score"])
        for i in range(n):
            label = LABELS[i % 3] if label_kind == "names" else str(i % 3)
            w.writerow([random_text(rng), random_text(rng) if pair else "", label, f"{rng.uniform(0, 5):.3f}"])
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_split(d / "train.csv", 150, seed=1, pair=True)
    write_split(d / "validation.csv", 40, seed=2, pair=True)
    return d


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def clf_teacher(tmp_path: Path) -> Path:
    return make_model(tmp_path / "teacher-clf", "sequence", num_labels=3, seed=1)


def spread(directory: Path, factor: float) -> Path:
    """Scale a fresh model's weight matrices: a 0.02-std init gives near-constant outputs that test little."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    arch = config.architectures[0]
    model = getattr(transformers, arch).from_pretrained(directory)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(factor)
    model.save_pretrained(directory)
    return directory


def no_dropout(directory: Path) -> Path:
    """A student without dropout: its training steps depend on the data, targets and optimizer alone."""
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they only contend.
    Modules of tiny-model runs use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
