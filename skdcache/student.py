"""Build the student: a pretrained model, a layer subset of a bigger one, or a fresh config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from skdcache.errors import SkdError
from skdcache.teachers import load_tokenizer, resolve_model_dir

AUTO_CLASSES = {
    "sequence": "AutoModelForSequenceClassification",
    "mlm": "AutoModelForMaskedLM",
    "causal": "AutoModelForCausalLM",
}


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
    import transformers
    from transformers import AutoConfig

    auto = getattr(transformers, AUTO_CLASSES[head])
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
        tokenizer_dir = config_dict.pop("tokenizer", None)
        if not tokenizer_dir:
            raise SkdError(f'student config {path} needs a "tokenizer" key naming a tokenizer directory')
        config = AutoConfig.for_model(**{**config_dict, **kwargs})
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(resolve_model_dir(tokenizer_dir), trust_remote_code)
    else:
        model_dir = resolve_model_dir(spec.source)
        import logging

        quiet = logging.getLogger("transformers.modeling_utils")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "newly initialized classifier" is expected here
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
            quiet.setLevel(level)
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
    if spec.layers is not None:
        model = keep_layers(model, spec.layers)
    return model, tokenizer


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
