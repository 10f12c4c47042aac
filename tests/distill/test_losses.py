"""Losses checked against plain-formula float64 references."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from skdcache.distill.losses import (
    HiddenProjector,
    hidden_state_loss,
    regression_kd_loss,
    sequence_kd_loss,
    topk_kd_loss,
    uniform_layer_map,
)

TEMPERATURES = [0.5, 1.0, 2.0, 4.0]


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _reference_sequence_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    rows = zip(student.double().tolist(), teacher.double().tolist(), strict=True)
    kls = [_kl(_softmax(t, temperature), _softmax(s, temperature)) for s, t in rows]
    return temperature**2 * sum(kls) / len(kls)


def _teacher_cache(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache stores: top-k of the T=1 log-softmax plus log of the remaining mass."""
    logp = torch.log_softmax(teacher_logits.double(), dim=-1)
    top_logp, top_ids = logp.topk(k, dim=-1)
    rest = 1.0 - top_logp.exp().sum(-1)
    tail = torch.where(rest > 0, rest.clamp_min(1e-300).log(), torch.full_like(rest, -math.inf))
    if k == teacher_logits.shape[-1]:
        tail = torch.full_like(rest, -math.inf)
    return top_ids, top_logp.float(), tail.float()


def _temper(probs: list[float], temperature: float) -> list[float]:
    """p^(1/T), renormalised: the tempered distribution, computed in probability space."""
    powered = [p ** (1.0 / temperature) if p > 0 else 0.0 for p in probs]
    total = sum(powered)
    return [p / total for p in powered]


def _reference_bucketed_kd(student, teacher, ids, temperature: float) -> float:
    """Independent float64 reference from the FULL teacher and student distributions (not from the cache):
    sum each into the k top-k buckets plus one tail bucket at T = 1, temper both bucket distributions, take
    T^2 * KL, average over rows."""
    total = 0.0
    for s_row, t_row, id_row in zip(student.double().tolist(), teacher.double().tolist(), ids.tolist(), strict=True):
        p, q = _softmax(t_row), _softmax(s_row)
        rest = [j for j in range(len(p)) if j not in set(id_row)]
        p_buckets = [p[i] for i in id_row] + ([sum(p[j] for j in rest)] if rest else [])
        q_buckets = [q[i] for i in id_row] + ([sum(q[j] for j in rest)] if rest else [])
        total += _kl(_temper(p_buckets, temperature), _temper(q_buckets, temperature))
    return temperature**2 * total / len(ids)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sequence_kd_matches_reference(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=gen) * 3
    teacher = torch.randn(6, 5, generator=gen) * 3
    got = sequence_kd_loss(student, teacher.half(), temperature)
    want = _reference_sequence_kd(student, teacher.half().float(), temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_sequence_kd_zero_when_equal_and_positive_otherwise() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    assert sequence_kd_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert sequence_kd_loss(logits, logits.flip(-1), 2.0).item() > 1e-3


def test_regression_kd_flattens_both_shapes() -> None:
    student = torch.tensor([[1.0], [2.0], [4.0]])
    teacher = torch.tensor([1.5, 2.0, 1.0], dtype=torch.float16)
    want = ((1.0 - 1.5) ** 2 + 0.0 + (4.0 - 1.0) ** 2) / 3
    assert regression_kd_loss(student, teacher).item() == pytest.approx(want)
    with pytest.raises(ValueError):
        regression_kd_loss(student, teacher[:2])


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_kd_matches_bucketed_reference(temperature: float, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    student, teacher = torch.randn(5, 12, generator=gen) * 2, torch.randn(5, 12, generator=gen) * 2
    ids, top_logp, tail = _teacher_cache(teacher, k)
    got = topk_kd_loss(student, ids.int(), top_logp.half(), tail, temperature)
    want = _reference_bucketed_kd(student, teacher, ids, temperature)
    assert got.item() == pytest.approx(want, rel=2e-3, abs=1e-5)  # the cache's float16 log-probs


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_topk_kd_full_vocab_equals_full_kl(temperature: float) -> None:
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(7, 9, generator=gen) * 2, torch.randn(7, 9, generator=gen) * 2
    ids, top_logp, tail = _teacher_cache(teacher, k=9)
    assert torch.isinf(tail).all()
    got = topk_kd_loss(student, ids, top_logp, tail, temperature)
    assert got.item() == pytest.approx(_reference_sequence_kd(student, teacher, temperature), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("k", [4, 50, 200])
def test_topk_kd_student_equal_to_teacher_has_zero_loss_and_gradient(temperature: float, k: int) -> None:
    """The invariant a wrong temperature breaks: at every T, k < V and k = V, equal distributions cost nothing."""
    teacher = torch.randn(6, 200, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 3
    student = teacher.float().clone().requires_grad_()
    loss = topk_kd_loss(student, *_teacher_cache(teacher, k), temperature)
    (grad,) = torch.autograd.grad(loss, student)
    assert abs(loss.item()) < 1e-5
    assert grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_topk_kd_optimum_keeps_the_teacher_tail_mass(temperature: float) -> None:
    """Minimising the loss drives the student's bucket masses (tail included) to the teacher's, not the tail
    to zero: free student logits trained by gradient descent end at the teacher's buckets."""
    gen = torch.Generator().manual_seed(11)
    teacher = torch.randn(3, 40, generator=gen, dtype=torch.float64) * 2
    ids, top_logp, tail = _teacher_cache(teacher, 5)
    student = torch.zeros(3, 40, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.1)
    for _ in range(600):
        opt.zero_grad()
        topk_kd_loss(student, ids, top_logp, tail, temperature).backward()
        opt.step()
    q = torch.softmax(student.detach().double(), dim=-1)
    q_top = q.gather(-1, ids)
    torch.testing.assert_close(q_top, top_logp.double().exp(), atol=2e-3, rtol=0)
    torch.testing.assert_close(1 - q_top.sum(-1), tail.double().exp(), atol=2e-3, rtol=0)


def test_topk_kd_is_lower_bound_of_full_kl_at_t1() -> None:
    gen = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(6, 20, generator=gen), torch.randn(6, 20, generator=gen)
    full = _reference_sequence_kd(student, teacher, 1.0)
    assert topk_kd_loss(student, *_teacher_cache(teacher, k=4)).item() < full


def test_topk_teacher_buckets_sum_to_one() -> None:
    ids, top_logp, tail = _teacher_cache(torch.randn(10, 30, generator=torch.Generator().manual_seed(5)), 5)
    bucket_mass = top_logp.double().exp().sum(-1) + tail.double().exp()
    assert torch.allclose(bucket_mass, torch.ones(10, dtype=torch.float64), atol=1e-5)
    assert (tail < 0).all()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_topk_kd_extreme_logits_fp16_no_nan(temperature: float) -> None:
    gen = torch.Generator().manual_seed(7)
    student = (torch.randn(4, 16, generator=gen) * 1e4).clamp(-6e4, 6e4).half().requires_grad_()
    teacher = torch.randn(4, 16, generator=gen) * 1e4
    for k in (3, 16):
        ids, top_logp, tail = _teacher_cache(teacher, k)
        loss = topk_kd_loss(student, ids, top_logp.half(), tail.half(), temperature)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_topk_kd_student_tail_survives_confident_student() -> None:
    """log(1 - sum) would give log(0) = -inf here; the logsumexp tail stays finite and correct."""
    student = torch.tensor([[60.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[0]])
    top_logp = torch.tensor([[math.log(0.5)]])
    tail = torch.tensor([math.log(0.5)])
    got = topk_kd_loss(student, ids, top_logp, tail).item()
    # student tail log-mass = log(3) - 60 (up to exp(-60) corrections)
    want = 0.5 * math.log(0.5) + 0.5 * (math.log(0.5) - (math.log(3.0) - 60.0))
    assert got == pytest.approx(want, rel=1e-5)


def test_topk_kd_empty_returns_zero_with_grad() -> None:
    student = torch.zeros(0, 10, requires_grad=True)
    loss = topk_kd_loss(student, torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 3), torch.zeros(0))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_hidden_state_loss_mse_and_projection() -> None:
    gen = torch.Generator().manual_seed(8)
    student, teacher = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    want = sum((a - b) ** 2 for a, b in zip(student.flatten().tolist(), teacher.flatten().tolist(), strict=True)) / 24
    assert hidden_state_loss(student, teacher.half()).item() == pytest.approx(want, rel=1e-3)

    projector = HiddenProjector(4, 6, n_layers=2)
    wide_teacher = torch.randn(2, 3, 6, generator=gen)
    loss = hidden_state_loss(student, wide_teacher, projection=functools.partial(projector, 1))
    loss.backward()
    assert projector.projections[1].weight.grad is not None
    assert projector.projections[0].weight.grad is None


def test_hidden_state_loss_width_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="student width 256 != teacher width 384: enable the learned projection"):
        hidden_state_loss(torch.zeros(2, 256), torch.zeros(2, 384))


def test_hidden_projector_identity_when_widths_match() -> None:
    x = torch.randn(2, 8)
    identity = HiddenProjector(8, 8, n_layers=3)
    assert sum(p.numel() for p in identity.parameters()) == 0
    assert torch.equal(identity(2, x), x)
    forced = HiddenProjector(8, 8, n_layers=3, force=True)
    assert len(list(forced.parameters())) == 6 and forced(0, x).shape == (2, 8)
    with pytest.raises(IndexError):
        identity(3, x)


@pytest.mark.parametrize(
    ("n_s", "n_t", "want"),
    [
        (4, 12, [(1, 3), (2, 6), (3, 9), (4, 12)]),
        (6, 12, [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]),
        (3, 4, [(1, 1), (2, 3), (3, 4)]),
        (4, 6, [(1, 2), (2, 3), (3, 5), (4, 6)]),
        (6, 6, [(i, i) for i in range(1, 7)]),
        (4, 2, [(1, 1), (2, 1), (3, 2), (4, 2)]),
    ],
)
def test_uniform_layer_map(n_s: int, n_t: int, want: list[tuple[int, int]]) -> None:
    assert uniform_layer_map(n_s, n_t) == want


def test_uniform_layer_map_rejects_zero_layers() -> None:
    with pytest.raises(ValueError):
        uniform_layer_map(0, 12)
