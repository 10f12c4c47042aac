"""A teacher of the team: `--teacher NAME=PATH` parsing and loading the model offline-safely."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from skdcache.cache.fingerprint import model_weights_hash
from skdcache.errors import SkdError
from skdcache.models import auto_class, detect_head, load_config, load_tokenizer, resolve_model_dir


@dataclass(frozen=True)
class TeacherSpec:
    """`--teacher NAME=PATH_OR_HUB_ID[@REVISION]`; `head` is auto-detected from the config unless given."""

    name: str
    source: str
    revision: str | None = None
    head: str = "auto"

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        if "=" not in text:
            raise SkdError(f"--teacher {text!r}: write NAME=PATH_OR_HUB_ID[@REVISION]")
        name, source = text.split("=", 1)
        revision = None
        if "@" in source and not Path(source).exists():
            source, revision = source.rsplit("@", 1)
        if not name or not source:
            raise SkdError(f"--teacher {text!r}: write NAME=PATH_OR_HUB_ID[@REVISION]")
        return cls(name.strip(), source.strip(), revision)


@dataclass
class TeacherFiles:
    """A teacher found and described without its weights: precompute checks the options, keys the cache and
    tokenizes with it, and loads the weights from it only when blocks must be computed. The tokenizer is read on
    first use, so checks that need the config alone work from a folder holding only config.json."""

    spec: TeacherSpec
    model_dir: Path
    config: Any
    head: str
    trust_remote_code: bool = False

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.model_dir, self.trust_remote_code)


def open_teacher(spec: TeacherSpec, trust_remote_code: bool = False) -> TeacherFiles:
    """The teacher's folder, config and head (and, when first asked, its tokenizer): read once per command."""
    model_dir = resolve_model_dir(spec.source, spec.revision)
    config = load_config(model_dir, spec.name, trust_remote_code)
    return TeacherFiles(spec, model_dir, config, detect_head(config, spec.head), trust_remote_code)


@dataclass
class LoadedTeacher:
    spec: TeacherSpec
    model_dir: Path
    model: torch.nn.Module
    tokenizer: object
    head: str
    weights_hash: str

    @property
    def config(self):
        return self.model.config

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_teacher(
    spec: TeacherSpec,
    device: torch.device,
    trust_remote_code: bool = False,
    weights_hash: str | None = None,
    files: TeacherFiles | None = None,
) -> LoadedTeacher:
    """The teacher's weights on `device`, in eval mode; `files` when its folder was opened already."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    files = files or open_teacher(spec, trust_remote_code)
    model = auto_class(files.head).from_pretrained(
        files.model_dir, trust_remote_code=trust_remote_code, dtype=torch.float32
    )
    model.eval().to(device)
    weights_hash = weights_hash or model_weights_hash(files.model_dir)
    return LoadedTeacher(spec, files.model_dir, model, files.tokenizer, files.head, weights_hash)
