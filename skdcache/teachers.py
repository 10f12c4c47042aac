"""Load a teacher offline-safely and turn one padded batch into the targets the cache stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from skdcache.cache.fingerprint import model_weights_hash
from skdcache.errors import SkdError

ARCH_SUFFIX_TO_HEAD = {"ForSequenceClassification": "sequence", "ForMaskedLM": "mlm", "ForCausalLM": "causal"}


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


def resolve_model_dir(source: str, revision: str | None = None) -> Path:
    """A local directory, or the offline hub snapshot of `source`; never downloads unless online."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                source, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
            )
        )
    except Exception as exc:
        raise SkdError(
            f"model {source!r} cannot be loaded offline ({type(exc).__name__}): download it once with network "
            f"access or pass a local directory"
        ) from exc


def load_config(model_dir: Path, name: str, trust_remote_code: bool = False):
    """The model config; code shipped with a model runs only when the user passed --trust-remote-code."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise SkdError(f"model {name} ships custom code; pass --trust-remote-code only if you trust it") from exc
        raise SkdError(f"cannot read the config of {name} at {model_dir}: {str(exc).splitlines()[0]}") from exc


def detect_head(config, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    for arch in config.architectures or []:
        for suffix, head in ARCH_SUFFIX_TO_HEAD.items():
            if arch.endswith(suffix):
                return head
    raise SkdError(
        f"cannot tell the head of a {config.architectures or config.model_type} model; fine-tune it first "
        f"(skdcache train --mode none) or pass head=sequence|mlm|causal"
    )


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        raise SkdError(
            f"tokenizer of {model_dir} has no pad token; set one (e.g. tokenizer.pad_token = eos) and save it"
        )
    return tok


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
    spec: TeacherSpec, device: torch.device, trust_remote_code: bool = False, weights_hash: str | None = None
) -> LoadedTeacher:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model_dir = resolve_model_dir(spec.source, spec.revision)
    config = load_config(model_dir, spec.name, trust_remote_code)
    head = detect_head(config, spec.head)
    auto = {
        "sequence": AutoModelForSequenceClassification,
        "mlm": AutoModelForMaskedLM,
        "causal": AutoModelForCausalLM,
    }[head]
    model = auto.from_pretrained(model_dir, trust_remote_code=trust_remote_code, dtype=torch.float32)
    model.eval().to(device)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    return LoadedTeacher(spec, model_dir, model, tokenizer, head, weights_hash or model_weights_hash(model_dir))


@dataclass
class BatchTargets:
    """Targets of one padded batch, already reduced to what is stored (numpy-ready, on CPU).

    logits [B, C]; per token target (flattened over the batch in row order): topk_logprobs [n, k],
    topk_ids [n, k], tail_logmass [n]; hidden [B, L, H] (cls) or [n_tok, L, H] (all non-pad tokens).
    """

    logits: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    tail_logmass: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def topk_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-vocabulary log-softmax, then top-k and the log of the mass left outside it.

    Args:
        logits: [n, V] at the positions that carry a loss.
    Returns:
        values [n, k] (descending log-probs), ids [n, k], tail [n] = log(1 - sum(exp(values))).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    # log(1 - p_topk) computed as logsumexp of the rest: exact even when the top-k holds almost all mass.
    rest = logp.scatter(-1, ids, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1)
    return values, ids, tail


@torch.inference_mode()
def teacher_forward(
    teacher: LoadedTeacher,
    batch: dict[str, torch.Tensor],
    target_mask: torch.Tensor | None,
    top_k: int | None,
    hidden_layers: tuple[int, ...],
    hidden_tokens: str | None,
    label_permutation: torch.Tensor | None,
    autocast_dtype: torch.dtype | None,
    full_logits: bool = False,
) -> BatchTargets:
    """Run the teacher on a padded batch and reduce its outputs to cache targets.

    Args:
        batch: input_ids / attention_mask (/ token_type_ids) [B, T] on the teacher's device.
        target_mask: [B, T] bool, positions that carry a token-level loss (None for sequence heads).
        label_permutation: [C] teacher column for each dataset label (None = identity).
        full_logits: token heads: return the full-vocabulary logits at the target positions, [n, V], instead
            of top-k (the live reference the cache approximates; never stored).
    """
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = teacher.model(**batch, output_hidden_states=bool(hidden_layers))
    result = BatchTargets()
    if teacher.head == "sequence":
        logits = out.logits.float()
        result.logits = logits[:, label_permutation] if label_permutation is not None else logits
    elif full_logits:
        result.logits = out.logits[target_mask].float()
    else:
        values, ids, tail = topk_with_tail(out.logits[target_mask], top_k)
        result.topk_logprobs, result.topk_ids, result.tail_logmass = values, ids, tail
    if hidden_layers:
        stacked = torch.stack([out.hidden_states[i].float() for i in hidden_layers], dim=2)  # [B, T, L, H]
        if hidden_tokens == "cls":
            result.hidden = stacked[:, 0]
        else:
            result.hidden = stacked[batch["attention_mask"].bool()]
    return result
