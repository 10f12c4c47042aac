"""Sampled token targets: draws that follow the teacher, and a loss whose value and gradient are unbiased
estimates of the full-vocabulary tempered KL (checked against a float64 reference over the whole vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, spread, write_split

from skdcache import DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.cache.fingerprint import cache_key
from skdcache.cache.spec import TargetSpec
from skdcache.distill.losses import sampled_kd_loss
from skdcache.distill.objective import sparse_entries
from skdcache.teacher.reduce import position_uniforms, sample_targets
from skdcache.train import train
from skdcache.training.config import TrainConfig

V = 60


def _spec(kind: str, n: int, temperature: float, k: int | None = None) -> TargetSpec:
    return TargetSpec("causal", 32, top_k=k, targets=kind, samples=n, sample_temperature=temperature, sample_seed=0)


def _full_kl_and_grad(student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """T^2 * KL(p_T || q_T) per row, and its gradient with respect to the student logits, in float64."""
    s = student.double().clone().requires_grad_()
    p = F.softmax(teacher.double() / temperature, -1)
    kl = (p * (p.log() - F.log_softmax(s / temperature, -1))).sum(-1).mean() * temperature**2
    (grad,) = torch.autograd.grad(kl, s)
    return float(kl.detach()), grad


def _targets(teacher: torch.Tensor, spec: TargetSpec, seed: int):
    rows = np.arange(seed * len(teacher), (seed + 1) * len(teacher))  # a fresh row id, so fresh draws
    uniforms = position_uniforms(rows, [1] * len(rows), spec.samples, seed=0)
    out = sample_targets(teacher, spec, uniforms)
    from skdcache.cache.reader import Targets

    return Targets(**{k: v.float() if v.is_floating_point() else v for k, v in out.items()})


@pytest.mark.parametrize("kind, k", [("sampled", None), ("hybrid", 4)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_and_gradient_are_unbiased(kind: str, k: int | None, temperature: float):
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, V, generator=gen, dtype=torch.float64) * 2.5
    student = torch.randn(3, V, generator=gen) * 2.0
    spec = _spec(kind, 8, temperature, k)
    want_loss, want_grad = _full_kl_and_grad(student, teacher, temperature)
    losses, grads = [], []
    for trial in range(1500):
        ids, weights, lp = sparse_entries(_targets(teacher, spec, trial))
        s = student.clone().requires_grad_()
        loss = sampled_kd_loss(s, ids, weights, lp, temperature)
        (grad,) = torch.autograd.grad(loss, s)
        losses.append(float(loss.detach()))
        grads.append(grad.double())
    losses_t, grads_t = torch.tensor(losses), torch.stack(grads)
    se = losses_t.std() / len(losses) ** 0.5
    assert abs(losses_t.mean() - want_loss) < 4 * se + 2e-3 * abs(want_loss)  # float16 log-probs aside
    grad_se = grads_t.std(0) / len(grads) ** 0.5
    assert ((grads_t.mean(0) - want_grad).abs() <= 4 * grad_se + 1e-4).float().mean() > 0.99
    # the estimate carries information: a single draw differs from the mean, yet correlates with the truth
    cos = F.cosine_similarity(grads_t.mean(0).flatten(), want_grad.flatten(), dim=0)
    assert cos > 0.99


def test_student_equal_to_teacher_has_zero_loss():
    teacher = torch.randn(5, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for kind, k in (("sampled", None), ("hybrid", 6)):
        for temperature in (0.5, 1.0, 2.0, 4.0):
            ids, weights, lp = sparse_entries(_targets(teacher, _spec(kind, 16, temperature, k), 0))
            loss = sampled_kd_loss(teacher.float(), ids, weights, lp, temperature)
            assert abs(float(loss)) < 5e-3 * temperature**2  # float16 rounding of the stored log-probs only


def test_draws_follow_the_tempered_teacher_and_hybrid_draws_only_the_tail():
    teacher = torch.randn(1, V, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    p = F.softmax(teacher / 2.0, -1)[0]
    counts = torch.zeros(V, dtype=torch.float64)
    draws = 0
    for trial in range(300):
        t = _targets(teacher, _spec("sampled", 32, 2.0), trial)
        counts.index_add_(0, t.sample_ids[0], t.sample_counts[0].double())
        draws += int(t.sample_counts.sum())
    assert draws == 300 * 32
    expected = p * draws
    assert float(((counts - expected) ** 2 / expected).sum()) < V + 5 * (2 * V) ** 0.5  # chi-square, V - 1 dof
    t = _targets(teacher, _spec("hybrid", 32, 2.0, 5), 0)
    top = set(t.topk_ids[0].tolist())
    assert top == set(p.topk(5).indices.tolist())
    assert not top & set(t.sample_ids[0][t.sample_counts[0] > 0].tolist())
    assert float(t.tail_logmass[0].exp()) == pytest.approx(1 - float(p.topk(5).values.sum()), rel=1e-4)


def test_draws_depend_on_the_row_not_the_batch():
    teacher = torch.randn(4, V, generator=torch.Generator().manual_seed(3)) * 2
    spec = _spec("sampled", 8, 1.0)
    rows = np.array([10, 11, 12, 13])
    whole = sample_targets(teacher, spec, position_uniforms(rows, [1] * 4, 8, seed=0))
    parts = [
        sample_targets(teacher[i : i + 1], spec, position_uniforms(rows[i : i + 1], [1], 8, seed=0)) for i in range(4)
    ]
    for name in ("sample_ids", "sample_counts"):
        assert torch.equal(whole[name], torch.cat([p[name] for p in parts]))
    other = sample_targets(teacher, spec, position_uniforms(rows, [1] * 4, 8, seed=1))
    assert not torch.equal(whole["sample_ids"], other["sample_ids"])


# ---- end to end: precompute, train from the cache, and the same run with live teachers ---------------------------
@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    write_split(root / "train.csv", 120, seed=1)
    write_split(root / "validation.csv", 30, seed=2)
    teachers = {n: spread(make_model(root / n, "causal", layers=2, seed=s), 3.0) for n, s in (("t1", 1), ("t2", 2))}
    spec = DataSpec(str(root), label_column=None)
    student = make_model(root / "student", "causal", layers=1, seed=3)
    return root, spec, teachers, student


def _opts(**kw) -> TargetOptions:
    return TargetOptions(**{"max_length": 32, "batch_size": 32, "rows_per_block": 64, "progress": False, **kw})


def _steps(out: Path) -> list[dict]:
    return [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval" not in x]


@pytest.mark.parametrize("kind, kw", [("sampled", dict(samples=16)), ("hybrid", dict(top_k=4, samples=12))])
def test_cache_equals_live_teachers_at_t2(team, tmp_path: Path, kind: str, kw: dict):
    root, spec, teachers, student = team
    cache = tmp_path / "cache"
    team_specs = [TeacherSpec(n, str(p)) for n, p in teachers.items()]
    results = precompute(spec, team_specs, cache, _opts(targets=kind, sample_temperature=2.0, **kw))
    stored = TeacherCache(results[0].path)
    assert stored.targets.targets == kind and "sample_ids" in stored.arrays
    common = dict(data=spec, student=str(student), cache=str(cache), max_steps=4, batch_size=8, num_workers=0)
    common.update(progress=False, eval_every=4, max_length=32, device="cpu", temperature=2.0, alpha=1.0)
    train(TrainConfig(output=str(tmp_path / "cached"), **common))
    train(TrainConfig(output=str(tmp_path / "live"), mode="online", **common))
    a, b = _steps(tmp_path / "cached"), _steps(tmp_path / "live")
    assert [x["teacher"] for x in a] == [x["teacher"] for x in b] and len({x["teacher"] for x in a}) == 2
    assert [x["kd"] for x in a] == pytest.approx([x["kd"] for x in b], abs=1e-5)
    assert min(x["kd"] for x in a) > 1e-2
    with pytest.raises(SkdError, match="--temperature 2"):
        train(TrainConfig(output=str(tmp_path / "t1"), **{**common, "temperature": 1.0}))


def test_each_kind_has_its_own_key_and_topk_keys_are_unchanged():
    topk = TargetSpec("causal", 32, top_k=8)
    assert "targets" not in topk.to_dict() and "samples" not in topk.to_dict()  # keys from before sampling existed
    keys = {
        cache_key("w", "t", spec, None)
        for spec in (
            topk,
            TargetSpec("causal", 32, targets="sampled", samples=8, sample_temperature=1.0, sample_seed=0),
            TargetSpec("causal", 32, targets="sampled", samples=8, sample_temperature=2.0, sample_seed=0),
            TargetSpec("causal", 32, top_k=8, targets="hybrid", samples=8, sample_temperature=1.0, sample_seed=0),
        )
    }
    assert len(keys) == 4
