"""Knowledge-distillation losses.

Every loss upcasts to float32 internally because cached teacher outputs are usually stored in float16,
and the softmax / log terms of KD lose most of their precision in half precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Finite stand-in for log(0) when masking the top-k out of the student's tail. With -inf, a row whose top-k
# covers the whole vocab gets a -inf tail and inf * 0 NaNs inside branches that torch.where later discards;
# this value keeps every intermediate finite and still exp()-s to exactly 0.
_LOG_ZERO = torch.finfo(torch.float32).min


def sequence_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target KD loss for classification (Hinton et al.).

    Computes ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``; the ``T^2`` factor keeps the
    gradient scale independent of the temperature.

    Args:
        student_logits: Student logits, ``[batch, C]``.
        teacher_logits: Teacher logits, ``[batch, C]``; float16 is accepted and upcast.
        temperature: Softmax temperature ``T > 0``.

    Returns:
        Scalar loss, averaged over the batch (``batchmean``).
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: the teacher cache must match the task's label count"
        )
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
    return kl * temperature**2


def regression_kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE between student and teacher predictions for regression tasks (e.g. STS-B).

    Args:
        student: Student predictions, ``[batch]`` or ``[batch, 1]``.
        teacher: Teacher predictions, ``[batch]`` or ``[batch, 1]``; float16 is accepted.

    Returns:
        Scalar mean squared error.
    """
    student_flat = student.float().reshape(-1)
    teacher_flat = teacher.float().reshape(-1)
    if student_flat.shape != teacher_flat.shape:
        raise ValueError(
            f"student has {student_flat.numel()} predictions but teacher has {teacher_flat.numel()}: "
            "regression KD expects one value per example"
        )
    return F.mse_loss(student_flat, teacher_flat)


def topk_kd_loss(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    tail_logmass: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Token-level KD against a teacher cached as top-k log-probs plus one tail bucket.

    The vocabulary is split into ``k + 1`` buckets: the teacher's top-k tokens and the "tail" of every other
    token. Both distributions are first bucketed at ``T = 1`` (the only temperature the cache can represent
    exactly), then both bucket distributions are tempered the same way::

        b_t = [p_1 .. p_k, p_tail]            teacher buckets, p = softmax(z_t)  (read from the cache)
        b_s = [q_1 .. q_k, q_tail]            student buckets, q = softmax(z_s)  (same k ids)
        loss = T^2 * KL(softmax(log b_t / T) || softmax(log b_s / T))

    Consequences, for every ``T``: a student whose full distribution equals the teacher's gets zero loss and
    zero gradient (both sides are the same function of equal buckets); the minimum over students is reached
    exactly when the student's bucket masses equal the teacher's (the tail mass included); with ``k = V`` the
    tail is empty and the loss is the full-vocabulary tempered KL ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.

    What it bounds: at ``T = 1`` it is a lower bound of the full KL (merging outcomes never increases KL).
    At ``T != 1`` it is the tempered KL of the ``k + 1``-outcome coarse-graining and is *not* a bound of the
    full-vocabulary tempered KL: the tail's internal spread is unknown to the cache, so it cannot be tempered
    token by token. See docs/token-targets.md.

    The student's tail is computed in log space (logsumexp over the non-top-k log-probs) because
    ``log(1 - sum(top-k probs))`` underflows to ``log(0)`` when the student is confident.

    Args:
        student_logits: Student logits at the positions that carry a loss, ``[n_tok, V]``.
        topk_ids: Teacher top-k token ids, ``[n_tok, k]``; any integer dtype, assumed distinct per row.
        topk_logprobs: Teacher log-probs of those ids (log-softmax over the full vocab at ``T = 1``),
            ``[n_tok, k]``; float16 is accepted (the renormalisation inside the tempering absorbs its rounding).
        tail_logmass: ``log(1 - sum(exp(topk_logprobs)))``, ``[n_tok]``; ``-inf`` when the top-k holds all
            the mass.
        temperature: Temperature ``T > 0`` applied to both bucket distributions.

    Returns:
        Scalar loss, averaged over tokens; a zero that still carries a graph when ``n_tok == 0``.
    """
    _check_temperature(temperature)
    _check_topk_shapes(student_logits, topk_ids, topk_logprobs, tail_logmass)
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0

    student_buckets = _student_bucket_logprobs(student_logits, topk_ids.long())  # [n_tok, k+1], T = 1
    teacher_buckets = torch.cat([topk_logprobs.float(), tail_logmass.float().unsqueeze(-1)], dim=-1)
    teacher_logp = F.log_softmax(teacher_buckets / temperature, dim=-1)
    student_logp = F.log_softmax(student_buckets / temperature, dim=-1)
    teacher_p = teacher_logp.exp()

    # Buckets with zero teacher mass contribute exactly 0 (0 * log 0 := 0); sanitising before the
    # product keeps both the value and the gradient finite.
    has_mass = teacher_p > 0
    teacher_logp = torch.where(has_mass, teacher_logp, torch.zeros_like(teacher_logp))
    terms = teacher_p * (teacher_logp - student_logp)
    terms = torch.where(has_mass, terms, torch.zeros_like(terms))
    return terms.sum(dim=-1).mean() * temperature**2


def sampled_kd_loss(
    student_logits: Tensor,
    ids: Tensor,
    weights: Tensor,
    teacher_logprobs: Tensor,
    temperature: float = 1.0,
) -> Tensor:
    """Token-level KD against a sparse teacher target: ids with the teacher mass each one stands for.

    ``loss = T^2 * sum_j w_j * (lp_j - log q_T(id_j))`` with ``q_T = softmax(student_logits / T)``. The
    targets come from ``skdcache.teacher.reduce.sample_targets``: for ids drawn from the teacher's tempered
    distribution ``p_T`` with weights ``count / N`` (``sampled``), or exact top-k masses plus tail draws
    weighted ``tail_mass * count / N`` (``hybrid``), both the loss and its gradient are unbiased estimates of
    the full-vocabulary ``T^2 * KL(p_T || q_T)`` and its gradient (Sparse Logit Sampling, Anshumann et al.,
    ACL 2025). The estimate is exact in expectation only: for one draw a student equal to the teacher gets
    zero loss but a gradient ``T * (q_T - p_hat)`` that averages to zero. See docs/token-targets.md.

    Args:
        student_logits: ``[n_tok, V]`` at the positions that carry a loss.
        ids: ``[n_tok, m]`` token ids; padding entries have weight 0.
        weights: ``[n_tok, m]`` teacher mass per entry, summing to 1 per row (up to float16 rounding).
        teacher_logprobs: ``[n_tok, m]`` teacher ``log p_T(id)`` (the loss value needs them, the gradient not).
        temperature: must be the temperature the targets were drawn at.

    Returns:
        Scalar loss, averaged over tokens; a zero that still carries a graph when ``n_tok == 0``.
    """
    _check_temperature(temperature)
    if not ids.shape == weights.shape == teacher_logprobs.shape or ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"ids {tuple(ids.shape)}, weights {tuple(weights.shape)}, teacher_logprobs "
            f"{tuple(teacher_logprobs.shape)} and student_logits {tuple(student_logits.shape)} disagree"
        )
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    student_logp = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, ids.long())  # [n, m]
    w = weights.float()
    terms = torch.where(w > 0, w * (teacher_logprobs.float() - student_logp), torch.zeros_like(w))
    return terms.sum(dim=-1).mean() * temperature**2


def _student_bucket_logprobs(student_logits: Tensor, topk_ids: Tensor) -> Tensor:
    """Student log-probs (``T = 1``) at the teacher's top-k ids plus the log of the remaining mass.

    Args:
        student_logits: ``[n_tok, V]``.
        topk_ids: ``[n_tok, k]`` long.

    Returns:
        ``[n_tok, k + 1]`` log-probs that sum (in prob space) to 1 per row.
    """
    student_logp = F.log_softmax(student_logits.float(), dim=-1)
    top = student_logp.gather(-1, topk_ids)
    in_topk = torch.zeros_like(student_logp, dtype=torch.bool).scatter_(-1, topk_ids, True)
    tail = torch.logsumexp(student_logp.masked_fill(in_topk, _LOG_ZERO), dim=-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def _check_topk_shapes(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, tail_logmass: Tensor) -> None:
    """Fail early with a readable message instead of a gather/broadcast error deep in the loss."""
    if student_logits.dim() != 2 or topk_ids.dim() != 2:
        raise ValueError(
            f"expected student_logits [n_tok, V] and topk_ids [n_tok, k], got {tuple(student_logits.shape)} "
            f"and {tuple(topk_ids.shape)}: gather the loss positions before calling topk_kd_loss"
        )
    n_tok, vocab = student_logits.shape
    if topk_ids.shape != topk_logprobs.shape or topk_ids.shape[0] != n_tok:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)}, topk_logprobs {tuple(topk_logprobs.shape)} and "
            f"student_logits {tuple(student_logits.shape)} disagree: all must share n_tok (and k)"
        )
    if tuple(tail_logmass.shape) != (n_tok,):
        raise ValueError(f"tail_logmass has shape {tuple(tail_logmass.shape)}, expected ({n_tok},)")
    if topk_ids.shape[1] > vocab:
        raise ValueError(f"k = {topk_ids.shape[1]} exceeds the student vocabulary size {vocab}")


def hidden_state_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, projection: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """MSE between (optionally projected) student hidden states and teacher hidden states.

    Args:
        student_hidden: Student states, ``[..., H_s]``.
        teacher_hidden: Teacher states, ``[..., H_t]``; float16 is accepted.
        projection: Optional module (or callable, e.g. ``functools.partial(projector, i)``) mapping
            ``H_s -> H_t``; required when the widths differ.

    Returns:
        Scalar mean squared error over all elements.
    """
    projected = projection(student_hidden) if projection is not None else student_hidden
    student_width, teacher_width = projected.shape[-1], teacher_hidden.shape[-1]
    if student_width != teacher_width:
        fix = "fix the projection's output width" if projection is not None else "enable the learned projection"
        raise ValueError(f"student width {student_width} != teacher width {teacher_width}: {fix}")
    if projected.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(projected.shape)} and teacher hidden {tuple(teacher_hidden.shape)} "
            "differ outside the width: check the batch / sequence alignment of the teacher cache"
        )
    return F.mse_loss(projected.float(), teacher_hidden.float())


def uniform_layer_map(n_student_layers: int, n_teacher_layers: int) -> list[tuple[int, int]]:
    """TinyBERT-style uniform mapping from student to teacher transformer layers.

    Student layer ``i`` (1-based, ``i = 1..n_s``) maps to teacher layer ``round(i * n_t / n_s)``, rounded
    half up, so the last student layer always meets the last teacher layer. The embedding pair (0, 0) is
    NOT included: callers that distil embeddings add it themselves. When the student is deeper than the
    teacher, teacher indices are clamped to at least 1 so no transformer layer is matched to embeddings.

    Args:
        n_student_layers: Number of student transformer layers ``n_s >= 1``.
        n_teacher_layers: Number of teacher transformer layers ``n_t >= 1``.

    Returns:
        ``n_s`` pairs ``(student_layer, teacher_layer)``,
        e.g. 4 / 12 -> ``[(1, 3), (2, 6), (3, 9), (4, 12)]``.
    """
    if n_student_layers < 1 or n_teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got student={n_student_layers} teacher={n_teacher_layers}")
    return [
        (i, max(1, (2 * i * n_teacher_layers + n_student_layers) // (2 * n_student_layers)))
        for i in range(1, n_student_layers + 1)
    ]


class HiddenProjector(nn.Module):
    """One learned ``H_s -> H_t`` projection per mapped layer (TinyBERT's ``W_h``).

    Each mapped layer gets its own projection because different depths live in different subspaces.
    With equal widths and ``force=False`` the projections are identities (no parameters).

    Args:
        student_width: Student hidden size ``H_s``.
        teacher_width: Teacher hidden size ``H_t``.
        n_layers: Number of mapped layers, i.e. ``len(uniform_layer_map(...))``.
        force: Use learned linear maps even when the widths are equal.
    """

    def __init__(self, student_width: int, teacher_width: int, n_layers: int, force: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        learned = force or student_width != teacher_width
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width) if learned else nn.Identity() for _ in range(n_layers)
        )

    def forward(self, layer_index: int, x: Tensor) -> Tensor:
        """Project one layer's student states.

        Args:
            layer_index: 0-based position in the layer map (NOT the 1-based student layer number).
            x: Student hidden states, ``[..., H_s]``.

        Returns:
            ``[..., H_t]``.
        """
        if not 0 <= layer_index < len(self.projections):
            raise IndexError(
                f"layer_index {layer_index} out of range for {len(self.projections)} mapped layers "
                "(use the 0-based position in the layer map)"
            )
        return self.projections[layer_index](x)


def _check_temperature(temperature: float) -> None:
    """Reject T <= 0 early; it would silently flip or blow up the softmax."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
