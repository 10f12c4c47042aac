"""Pytest fixtures: tiny offline teachers and small split files (built by benchmarks/fixtures.py, which the fault
campaigns share), and the helpers only tests use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.fixtures import LABELS, WORDS, make_model, make_tokenizer, write_split

# test modules import these from here (`from conftest import make_model`)
__all__ = ["LABELS", "WORDS", "make_model", "make_tokenizer", "no_dropout", "spread", "write_split"]


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
