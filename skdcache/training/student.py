"""The student: built from a pretrained model, a layer subset or a config; checked against the teachers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from skdcache.cache.fingerprint import tokenizer_hash
from skdcache.cache.reader import TeacherCache
from skdcache.data.rows import TextRows, tokenize
from skdcache.errors import SkdError
from skdcache.models import auto_class, load_tokenizer, resolve_model_dir
from skdcache.training.loader import StudentInputs


@dataclass(frozen=True)
class StudentSpec:
    """`--student PATH_OR_HUB_ID | CONFIG.json`, `--student-layers 0,1` (keep these layers, DistilBERT-style)."""

    source: str
    layers: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, source: str, layers: str | None) -> StudentSpec:
        keep = None
        if layers:
            try:
                values = [int(x) for x in layers.split(",")]
            except ValueError:
                raise SkdError(f"--student-layers {layers!r}: use N (first N layers) or a list like 0,2,4") from None
            keep = tuple(range(values[0])) if len(values) == 1 else tuple(values)
        return cls(source, keep)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The transformer block list (encoder.layer for BERT, layers for Llama, transformer.layer, ...)."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise SkdError(f"cannot find the {n} transformer layers of {type(model).__name__} to keep a subset")


def keep_layers(model: nn.Module, keep: tuple[int, ...]) -> nn.Module:
    """Drop every transformer layer not in `keep` (TinyBERT/DistilBERT-style initialisation from a teacher)."""
    layers = layer_list(model)
    if not keep or max(keep) >= len(layers) or min(keep) < 0:
        raise SkdError(f"--student-layers {list(keep)}: the model has layers 0..{len(layers) - 1}")
    kept = nn.ModuleList([layers[i] for i in keep])
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is layers:
                setattr(module, child_name, kept)
                break
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    for i, layer in enumerate(kept):  # attention caches index layers by position
        for attr in ("layer_idx",):
            for module in layer.modules():
                if hasattr(module, attr):
                    setattr(module, attr, i)
    return model


def build_student(
    spec: StudentSpec,
    head: str,
    num_labels: int | None,
    label_names: list[str] | None,
    task: str,
    trust_remote_code: bool = False,
):
    """The student model and its tokenizer, with the label mapping of the data."""
    from transformers import AutoConfig

    auto = auto_class(head)
    path = Path(spec.source)
    kwargs = {}
    if head == "sequence":
        kwargs["num_labels"] = num_labels
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        if task == "regression":
            kwargs["problem_type"] = "regression"
    if path.is_file() and path.suffix == ".json":
        config_dict = json.loads(path.read_text())
        config_dict.pop("tokenizer", None)
        config = AutoConfig.for_model(**{**config_dict, **kwargs})
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
        tokenizer = student_tokenizer(spec.source, trust_remote_code)
    else:
        model_dir = resolve_model_dir(spec.source)
        import logging

        # "newly initialized classifier" is expected here. Quieting modeling_utils also makes transformers 5 check
        # the model's tensor-parallel plan and list every layer as "not sharded": skdcache never shards.
        quiet = [logging.getLogger(f"transformers.{m}") for m in ("modeling_utils", "distributed.tensor_parallel")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            model = auto.from_pretrained(
                model_dir,
                trust_remote_code=trust_remote_code,
                dtype=torch.float32,
                ignore_mismatched_sizes=head == "sequence",  # a pretrained head for another label set is replaced
                **kwargs,
            )
        except (ValueError, RuntimeError) as exc:
            raise SkdError(f"cannot build a {head} student from {spec.source}: {str(exc).splitlines()[0]}") from exc
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
    if spec.layers is not None:
        model = keep_layers(model, spec.layers)
    return model, tokenizer


def student_tokenizer(source: str, trust_remote_code: bool = False):
    """The student's tokenizer: its model directory's, or the one a config .json names under "tokenizer"."""
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        tokenizer_dir = json.loads(path.read_text()).get("tokenizer")
        if not tokenizer_dir:
            raise SkdError(f'student config {path} needs a "tokenizer" key naming a tokenizer directory')
        return load_tokenizer(resolve_model_dir(tokenizer_dir), trust_remote_code)
    return load_tokenizer(resolve_model_dir(source), trust_remote_code)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_student_matches_teachers(
    caches: list[TeacherCache], tokenizer, max_length: int, beta: float, num_labels: int | None
) -> None:
    """Refuse, before step 1, targets the student cannot use: other tokens, another length, another label set."""
    for c in caches:
        t = c.targets
        needs_same_tokens = t.token_level or (beta > 0 and t.hidden_layers and t.hidden_tokens == "all")
        if needs_same_tokens and c.manifest.tokenizer_hash != tokenizer_hash(tokenizer):
            raise SkdError(
                f"teacher {c.name}'s token-level/hidden targets use another tokenizer than the student; "
                f"use a student with the teacher's tokenizer or sequence-level targets"
            )
        if needs_same_tokens and t.max_length != max_length:
            raise SkdError(f"teacher {c.name} was cached with --max-length {t.max_length}; use the same here")
        if t.head == "sequence" and c.manifest.teacher.num_labels != num_labels:
            raise SkdError(f"teacher {c.name} has {c.manifest.teacher.num_labels} labels, the data {num_labels}")


def student_inputs(tokenizer, rows: TextRows, head: str, max_length: int, caches: list[TeacherCache]) -> StudentInputs:
    """The student's tokenization of `rows`; MLM students mask the positions the teachers were cached with."""
    enc = tokenize(tokenizer, rows, max_length)
    special = None
    prob, seed = 0.15, 0
    if head == "mlm":
        special = [tokenizer.get_special_tokens_mask(x, already_has_special_tokens=True) for x in enc.ids]
        if caches:
            prob, seed = caches[0].targets.mlm_probability, caches[0].targets.mask_seed
    return StudentInputs(enc, rows.labels, head, tokenizer.pad_token_id, tokenizer.mask_token_id, special, prob, seed)
