"""The distillation objective of one step: which targets, which losses, how they combine.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels) + beta * hidden-state MSE

Sequence heads use the logits (MSE to the teacher output for regression); token-level heads use the
teacher's top-k plus a tail bucket at every position that carries a loss (docs/token-targets.md); `average`
mode mixes all teachers' soft targets. Teacher targets arrive as `Targets` (from the cache, or from a live
teacher in `online` mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from skdcache.cache.reader import Targets
from skdcache.losses import (
    HiddenProjector,
    hidden_state_loss,
    regression_kd_loss,
    sequence_kd_loss,
    topk_kd_loss,
)


@dataclass(frozen=True)
class Objective:
    head: str  # sequence | mlm | causal
    task: str  # classification | regression | lm
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.0
    # per teacher: ((student hidden_states index, position in that teacher's cached layers), ...)
    layer_maps: tuple[tuple[tuple[int, int], ...], ...] = ()
    hidden_tokens: str | None = None


def label_loss(obj: Objective, logits: Tensor, batch: dict) -> Tensor:
    """Cross-entropy to the labels (MSE for regression, next/masked-token CE for language models)."""
    if obj.head != "sequence":
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["token_labels"].flatten(), ignore_index=-100)
    if obj.task == "regression":
        return F.mse_loss(logits.float().view(-1), batch["labels"].float().view(-1))
    return F.cross_entropy(logits.float(), batch["labels"])


def soft_loss(obj: Objective, logits: Tensor, batch: dict, targets: Targets | list[Targets]) -> Tensor:
    """KD term for one teacher, or for the mean of all teachers' soft targets (`average` mode)."""
    if isinstance(targets, list):
        if obj.head == "sequence":
            return _average_sequence_loss(obj, logits, targets)
        return torch.stack([soft_loss(obj, logits, batch, t) for t in targets]).mean()
    if obj.head == "sequence":
        if obj.task == "regression":
            return regression_kd_loss(logits, targets.logits)
        return sequence_kd_loss(logits, targets.logits, obj.temperature)
    student = logits[batch["target_mask"]]  # [n_tok, V], row-major like the cached targets
    if targets.topk_ids is None:  # `online --full-logits`: KL over the whole vocabulary, per token
        return sequence_kd_loss(student, targets.logits, obj.temperature)
    return topk_kd_loss(student, targets.topk_ids, targets.topk_logprobs, targets.tail_logmass, obj.temperature)


def _average_sequence_loss(obj: Objective, logits: Tensor, targets: list[Targets]) -> Tensor:
    if obj.task == "regression":
        return regression_kd_loss(logits, torch.stack([t.logits for t in targets]).mean(0))
    T = obj.temperature
    mean_p = torch.stack([F.softmax(t.logits.float() / T, dim=-1) for t in targets]).mean(0)  # [B, C]
    # logits whose softmax at temperature T is exactly the mixture, fed to the same KD loss
    return sequence_kd_loss(logits, T * torch.log(mean_p.clamp_min(1e-12)), T)


def hidden_loss(
    obj: Objective,
    hidden_states: tuple[Tensor, ...],
    batch: dict,
    targets: Targets,
    projector: HiddenProjector,
    teacher: int,
) -> Tensor:
    """MSE between mapped student layers and the teacher's cached layers (CLS token or every token)."""
    losses = []
    for j, (s_layer, t_pos) in enumerate(obj.layer_maps[teacher]):
        h = hidden_states[s_layer]  # [B, T, H_s]
        if obj.hidden_tokens == "cls":
            student, teacher = h[:, 0], targets.hidden[:, t_pos]
        else:
            student, teacher = h[batch["attention_mask"].bool()], targets.hidden[:, t_pos]
        losses.append(hidden_state_loss(student, teacher, lambda x, j=j: projector(j, x)))
    return torch.stack(losses).mean()


def step_loss(
    obj: Objective,
    outputs,
    batch: dict,
    targets: Targets | list[Targets] | None,
    projectors: list[HiddenProjector] | None = None,
    teacher: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a step and its parts (for the metrics log)."""
    logits = outputs.logits
    parts: dict[str, Tensor] = {}
    has_labels = "labels" in batch or "token_labels" in batch
    if targets is None:
        total = parts["ce"] = label_loss(obj, logits, batch)
    else:
        parts["kd"] = soft_loss(obj, logits, batch, targets)
        total = obj.alpha * parts["kd"]
        if has_labels and obj.alpha < 1:
            parts["ce"] = label_loss(obj, logits, batch)
            total = total + (1 - obj.alpha) * parts["ce"]
        if obj.beta > 0 and not isinstance(targets, list):
            parts["hidden"] = hidden_loss(obj, outputs.hidden_states, batch, targets, projectors[teacher], teacher)
            total = total + obj.beta * parts["hidden"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
