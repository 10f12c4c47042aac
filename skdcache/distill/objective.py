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

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.distill.losses import (
    HiddenProjector,
    hidden_state_loss,
    regression_kd_loss,
    sampled_kd_loss,
    sequence_kd_loss,
    topk_kd_loss,
    uniform_layer_map,
)
from skdcache.errors import SkdError


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
    # per-row weights (--mode weight): "mix" distils from the weighted mixture; "closest" from the one candidate
    # teacher (weight > 0) whose targets the student is closest to at this step
    combine: str = "mix"


def label_loss(obj: Objective, logits: Tensor, batch: dict) -> Tensor:
    """Cross-entropy to the labels (MSE for regression, next/masked-token CE for language models)."""
    if obj.head != "sequence":
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["token_labels"].flatten(), ignore_index=-100)
    if obj.task == "regression":
        return F.mse_loss(logits.float().view(-1), batch["labels"].float().view(-1))
    return F.cross_entropy(logits.float(), batch["labels"])


def soft_loss(obj: Objective, logits: Tensor, batch: dict, targets: list[Targets]) -> Tensor:
    """KD term for one teacher's targets, or for the mean of several teachers' soft targets (`average`), or
    their per-row weighted mixture (`weight`); targets routed per row (`route`) carry a `row_mask`."""
    if targets[0].row_weight is not None and obj.combine == "closest":  # also a team of one: rows it gets wrong
        return _closest_sequence_loss(obj, logits, targets)
    if len(targets) > 1:
        if targets[0].row_weight is not None:
            return _weighted_sequence_loss(obj, logits, targets)
        if obj.head == "sequence":
            return _average_sequence_loss(obj, logits, targets)
        return torch.stack([soft_loss(obj, logits, batch, [t]) for t in targets]).mean()
    (target,) = targets
    if target.row_mask is not None:
        return _routed_loss(obj, logits, batch, target)
    if obj.head == "sequence":
        if obj.task == "regression":
            return regression_kd_loss(logits, target.logits)
        return sequence_kd_loss(logits, target.logits, obj.temperature)
    student = logits[batch["target_mask"]]  # [n_tok, V], row-major like the cached targets
    if target.sample_ids is not None:  # sampled / hybrid: an unbiased estimate of the full tempered KL
        return sampled_kd_loss(student, *sparse_entries(target), obj.temperature)
    if target.topk_ids is None:  # `online --full-logits`: KL over the whole vocabulary, per token
        return sequence_kd_loss(student, target.logits, obj.temperature)
    return topk_kd_loss(student, target.topk_ids, target.topk_logprobs, target.tail_logmass, obj.temperature)


def sparse_entries(target: Targets) -> tuple[Tensor, Tensor, Tensor]:
    """Sampled / hybrid targets as (ids, teacher mass, log p_T) per entry, [n_tok, m] each.

    Draws weigh count / N; with a top-k head (hybrid) the exact top-k masses come first and the draws, taken
    from the tail, share the tail's mass.
    """
    counts = target.sample_counts.float()
    weights = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    ids, logprobs = target.sample_ids, target.sample_logprobs
    if target.topk_ids is not None:
        weights = weights * target.tail_logmass.float().exp().unsqueeze(-1)
        ids = torch.cat([target.topk_ids, ids], dim=-1)
        weights = torch.cat([target.topk_logprobs.float().exp(), weights], dim=-1)
        logprobs = torch.cat([target.topk_logprobs, logprobs], dim=-1)
    return ids, weights, logprobs


def _routed_loss(obj: Objective, logits: Tensor, batch: dict, target: Targets) -> Tensor:
    """Per-row routing: the KD term of the rows that have a teacher (their targets hold only those rows), times
    their share of the batch's rows (token heads: of its target tokens). A row without a teacher adds 0, and
    every routed row weighs the same whatever its batch-mates drew."""
    mask = target.row_mask  # [B] bool
    if not bool(mask.any()):
        return logits.sum() * 0.0 + 0.0  # connected to the graph; + 0.0 turns -0.0 into 0.0 in the logs
    routed = Targets(**{**vars(target), "row_mask": None})
    if obj.head == "sequence":
        return soft_loss(obj, logits[mask], {}, [routed]) * mask.float().mean()
    tokens = batch["target_mask"]  # [B, T] bool
    share = tokens[mask].sum() / tokens.sum().clamp_min(1)
    return soft_loss(obj, logits[mask], {"target_mask": tokens[mask]}, [routed]) * share


def _weighted_sequence_loss(obj: Objective, logits: Tensor, targets: list[Targets]) -> Tensor:
    """Per-row weighting: KD from the mixture sum_k w_k(x) p_k(x) (regression: the weighted mean output)."""
    w = torch.stack([t.row_weight for t in targets], dim=1).float()  # [B, K], rows sum to 1
    if obj.task == "regression":
        return regression_kd_loss(logits, (torch.stack([t.logits for t in targets], 1) * w[..., None]).sum(1))
    T = obj.temperature
    p = torch.stack([F.softmax(t.logits.float() / T, dim=-1) for t in targets], dim=1)  # [B, K, C]
    mix = (p * w[..., None]).sum(1)  # [B, C]
    return sequence_kd_loss(logits, T * torch.log(mix.clamp_min(1e-12)), T)


def _closest_sequence_loss(obj: Objective, logits: Tensor, targets: list[Targets]) -> Tensor:
    """Student-aware choice among each row's candidates (weight > 0): KD from the candidate whose tempered
    distribution is closest to the student's now, KL(p_k || q) with the student detached for the choice. Rows
    without a candidate add 0, and the KD term is scaled by the share of rows that have one (as in routing)."""
    allowed = torch.stack([t.row_weight for t in targets], dim=1) > 0  # [B, K]
    has = allowed.any(1)  # [B]
    if not bool(has.any()):
        return logits.sum() * 0.0 + 0.0
    T = obj.temperature
    teacher_logits = torch.stack([t.logits.float() for t in targets], dim=1)  # [B, K, C]
    with torch.no_grad():
        q = F.log_softmax(logits.float() / T, dim=-1).unsqueeze(1)  # [B, 1, C]
        p = F.log_softmax(teacher_logits / T, dim=-1)  # [B, K, C]
        kl = (p.exp() * (p - q)).sum(-1).masked_fill(~allowed, float("inf"))  # [B, K]
        pick = kl.argmin(1)  # [B]; ties: team order
    chosen = teacher_logits[torch.arange(len(pick)), pick]  # [B, C]
    return sequence_kd_loss(logits[has], chosen[has], T) * has.float().mean()


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
    targets: list[Targets],
    projectors: list[HiddenProjector] | None = None,
    teacher: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a step and its parts (for the metrics log).

    Args:
        targets: one `Targets` per teacher of the step (none: labels only; several: their average).
        teacher: the index of the step's one teacher, for its hidden-state projector.
    """
    logits = outputs.logits
    parts: dict[str, Tensor] = {}
    has_labels = "labels" in batch or "token_labels" in batch
    if not targets:
        total = parts["ce"] = label_loss(obj, logits, batch)
    else:
        parts["kd"] = soft_loss(obj, logits, batch, targets)
        total = obj.alpha * parts["kd"]
        if has_labels and obj.alpha < 1:
            parts["ce"] = label_loss(obj, logits, batch)
            total = total + (1 - obj.alpha) * parts["ce"]
        if obj.beta > 0 and len(targets) == 1:
            parts["hidden"] = hidden_loss(obj, outputs.hidden_states, batch, targets[0], projectors[teacher], teacher)
            total = total + obj.beta * parts["hidden"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---- building the objective of a run -----------------------------------------------------------------------------
def build_objective(
    head: str,
    task: str,
    caches: list[TeacherCache],
    student_config,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    layer_map: str | None,
    mode: str,
    sampling: str = "",
) -> Objective:
    """The run's objective; with `beta > 0`, the student-to-teacher layer map of every teacher (checked)."""
    for c in caches:
        t = c.targets
        if t.sampled and t.sample_temperature != temperature:
            raise SkdError(
                f"teacher {c.name}'s targets were sampled at T = {t.sample_temperature:g}; train with --temperature "
                f"{t.sample_temperature:g} or precompute with --sample-temperature {temperature:g}"
            )
    layer_maps: tuple = ()
    hidden_tokens = None
    combine = "closest" if mode == "weight" and sampling == "closest-correct" else "mix"
    if combine == "closest" and task == "regression":
        raise SkdError(
            "--sampling closest-correct picks among the teachers right on a row: classification only; "
            "for regression use --mode weight --sampling ca-mkd"
        )
    if beta > 0:
        cached = [c.targets for c in caches]
        if not cached or not all(t.hidden_layers for t in cached):
            raise SkdError("--beta > 0 needs teachers cached with --hidden-layers; precompute them with it")
        if mode in ("average", "route", "weight"):
            raise SkdError(f"--beta applies to one teacher per step, not --mode {mode}; use skd/single/online with it")
        hidden_tokens = cached[0].hidden_tokens
        if any(t.hidden_tokens != hidden_tokens for t in cached):
            raise SkdError("teachers were cached with different --hidden-tokens; precompute them alike")
        layer_maps = tuple(tuple(_layer_map(c, student_config.num_hidden_layers, layer_map)) for c in caches)
    return Objective(head, task, temperature, alpha, beta, layer_maps, hidden_tokens, combine)


def _layer_map(cache: TeacherCache, n_s: int, explicit: str | None) -> list[tuple[int, int]]:
    """(student hidden_states index, position in the teacher's cached layers): explicit, or uniform by depth."""
    cached_layers = cache.targets.hidden_layers
    n_t = cache.manifest.teacher.num_hidden_layers
    if explicit:
        pairs = [tuple(int(x) for x in p.split(":")) for p in explicit.split(",")]
    else:
        pairs = [(s, t) for s, t in uniform_layer_map(n_s, n_t) if t in cached_layers]
        pairs = pairs or [(n_s, cached_layers[-1])]
    for s, t in pairs:
        if t not in cached_layers or not 0 <= s <= n_s:
            raise SkdError(
                f"--layer-map {s}:{t}: student has 0..{n_s}, {cache.name} cached layers {list(cached_layers)}"
            )
    return [(s, cached_layers.index(t)) for s, t in pairs]


def build_projectors(obj: Objective, caches: list[TeacherCache], student_width: int) -> torch.nn.ModuleList | None:
    """One learned projection per teacher and mapped layer (identity when the widths agree)."""
    if obj.beta <= 0:
        return None
    return torch.nn.ModuleList(
        HiddenProjector(student_width, c.manifest.teacher.hidden_size, len(m))
        for c, m in zip(caches, obj.layer_maps, strict=True)
    )
