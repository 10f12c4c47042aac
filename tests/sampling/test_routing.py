"""Per-row routing and weighting: each rule's choice by hand, draws keyed on (seed, step, row), one teacher read
per row, resume, the merged targets and the per-row KD mask, and bad flag combinations."""

from __future__ import annotations

import gc
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model, no_dropout, spread, write_split

from skdcache import DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.cache.reader import Targets
from skdcache.distill.losses import sequence_kd_loss
from skdcache.distill.objective import Objective, soft_loss
from skdcache.sampling.routing import ca_mkd_weights, draw_rows, route_table
from skdcache.targets.row_targets import merge_rows
from skdcache.targets.sources import CachedTargets, TeacherChoice, TeacherDraws
from skdcache.train import evaluate_and_checkpoint, fit, prepare, train
from skdcache.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the rules, by hand ----------------------------------------------------------------------------------------
CE = np.array([[0.5, 0.2, 0.2], [1.0, 2.0, 0.1], [0.3, 0.3, 0.3]])  # [rows, K]
CORRECT = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=float)
SIZES = [300, 200, 100]  # teacher 2 is the smallest, then 1, then 0


def test_min_ce_takes_the_lowest_ce_and_breaks_ties_by_size():
    table = route_table("min-ce", CE, CORRECT, SIZES, 1.0)
    assert table.argmax(1).tolist() == [2, 2, 2]  # row 0: tie 1/2 -> smaller (2); row 2: three-way tie -> 2
    assert (table.sum(1) == 1).all()
    table = route_table("min-ce", CE, CORRECT, [100, 200, 300], 1.0)
    assert table.argmax(1).tolist() == [1, 2, 0]


def test_confidence_is_a_softmax_of_minus_ce_over_tau():
    table = route_table("confidence", CE, CORRECT, SIZES, 0.5)
    want = np.exp(-CE / 0.5) / np.exp(-CE / 0.5).sum(1, keepdims=True)
    np.testing.assert_allclose(table, want, rtol=1e-12)


def test_ca_mkd_weights_by_hand():
    w = ca_mkd_weights(CE)
    soft = np.exp(CE) / np.exp(CE).sum(1, keepdims=True)
    np.testing.assert_allclose(w, (1 - soft) / 2, rtol=1e-12)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert w[1].argmax() == 2  # the lowest CE weighs most
    np.testing.assert_allclose(route_table("ca-mkd", CE, CORRECT, SIZES, 1.0), w)


def test_smallest_correct_takes_the_smallest_right_teacher_and_none_where_all_are_wrong():
    table = route_table("smallest-correct", CE, CORRECT, SIZES, 1.0)
    assert table[0].argmax() == 2 and table[2].argmax() == 2
    assert table[1].sum() == 0  # no teacher right: no teacher
    assert draw_rows(table, 0, 5, np.array([1, 0, 1]))[[0, 2]].tolist() == [-1, -1]


def test_draws_are_keyed_on_seed_step_and_row_only():
    table = np.full((50, 3), 1 / 3)
    rows = np.arange(50)
    batch = draw_rows(table, 7, 3, rows)
    alone = np.array([draw_rows(table, 7, 3, np.array([r]))[0] for r in rows[::-1]])[::-1]
    assert batch.tolist() == alone.tolist()  # independent of batch composition and order
    assert draw_rows(table, 7, 3, rows).tolist() == batch.tolist()
    assert draw_rows(table, 7, 4, rows).tolist() != batch.tolist()
    assert draw_rows(table, 8, 3, rows).tolist() != batch.tolist()
    assert set(batch.tolist()) == {0, 1, 2}


# ---- merged targets and the per-row KD mask --------------------------------------------------------------------
def test_merge_rows_puts_each_teachers_rows_back_in_batch_order():
    a = Targets(logits=torch.tensor([[1.0, 0.0], [2.0, 0.0]]))  # rows 0 and 3 of the batch
    b = Targets(logits=torch.tensor([[0.0, 5.0]]))  # row 1; row 2 has no teacher
    merged = merge_rows([(np.array([0, 3]), a), (np.array([1]), b)], 4)
    assert merged.row_mask.tolist() == [True, True, False, True]
    assert merged.logits.tolist() == [[1.0, 0.0], [0.0, 5.0], [2.0, 0.0]]


def test_merge_rows_concatenates_token_extents_in_row_order():
    def part(counts, base):
        n = sum(counts)
        ids = torch.arange(n * 2).view(n, 2) + base
        return Targets(
            topk_ids=ids,
            topk_logprobs=ids.float(),
            tail_logmass=torch.arange(n).float() + base,
            positions=torch.arange(n) + base,
            token_counts=torch.tensor(counts),
        )

    a, b = part([2, 1], 100), part([3], 200)  # a serves batch rows 0 and 2, b row 1
    merged = merge_rows([(np.array([0, 2]), a), (np.array([1]), b)], 3)
    assert merged.token_counts.tolist() == [2, 3, 1]
    assert merged.positions.tolist() == [100, 101, 200, 201, 202, 102]
    assert merged.topk_ids[:, 0].tolist() == [100, 102, 200, 202, 204, 104]


def test_routed_kd_counts_only_rows_with_a_teacher():
    obj = Objective("sequence", "classification", temperature=2.0)
    logits = torch.randn(4, 3)
    teacher = torch.randn(4, 3)
    mask = torch.tensor([True, False, True, True])
    routed = Targets(logits=teacher[mask], row_mask=mask)
    got = soft_loss(obj, logits, {}, [routed])
    want = sequence_kd_loss(logits[mask], teacher[mask], 2.0) * 3 / 4
    torch.testing.assert_close(got, want)
    none = Targets(logits=torch.zeros(0, 3), row_mask=torch.zeros(4, dtype=torch.bool))
    assert float(soft_loss(obj, logits, {}, [none])) == 0.0


def test_weighted_kd_distils_from_the_per_row_mixture():
    obj = Objective("sequence", "classification", temperature=2.0)
    logits, z1, z2 = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    w = torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    targets = [Targets(logits=z1, row_weight=w[:, 0]), Targets(logits=z2, row_weight=w[:, 1])]
    mix = w[:, :1] * F.softmax(z1 / 2, -1) + w[:, 1:] * F.softmax(z2 / 2, -1)
    want = F.kl_div(F.log_softmax(logits / 2, -1), mix, reduction="batchmean") * 4
    torch.testing.assert_close(soft_loss(obj, logits, {}, targets), want, rtol=1e-5, atol=1e-6)


def test_closest_correct_candidates_are_the_right_teachers():
    np.testing.assert_array_equal(route_table("closest-correct", CE, CORRECT, SIZES, 1.0), CORRECT)


def _closest_reference(student: np.ndarray, teachers: list[np.ndarray], allowed: np.ndarray, T: float) -> float:
    """Plain float64: per row, KL(p_k || q) over the candidates, the smallest one's T^2 KL; mean over ALL rows."""

    def log_softmax(z):
        z = z / T
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    total = 0.0
    for r in range(len(student)):
        q = log_softmax(student[r].astype(np.float64))
        kls = [
            float((np.exp(p := log_softmax(t[r].astype(np.float64))) * (p - q)).sum())
            for t, ok in zip(teachers, allowed[r], strict=True)
            if ok
        ]
        total += T * T * min(kls) if kls else 0.0
    return total / len(student)


def test_closest_correct_kd_equals_a_float64_reference_at_T2():
    obj = Objective("sequence", "classification", temperature=2.0, combine="closest")
    g = torch.Generator().manual_seed(0)
    student, z = torch.randn(6, 5, generator=g) * 2, [torch.randn(6, 5, generator=g) * 3 for _ in range(3)]
    allowed = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=bool)
    targets = [Targets(logits=z[k], row_weight=torch.from_numpy(allowed[:, k].astype(np.float32))) for k in range(3)]
    want = _closest_reference(student.numpy(), [t.numpy() for t in z], allowed, 2.0)
    assert float(soft_loss(obj, student, {}, targets)) == pytest.approx(want, rel=1e-5)


def test_closest_correct_with_the_student_equal_to_a_candidate_has_zero_loss_and_gradient():
    obj = Objective("sequence", "classification", temperature=2.0, combine="closest")
    g = torch.Generator().manual_seed(1)
    far, near = torch.randn(4, 5, generator=g) * 5, torch.randn(4, 5, generator=g)
    student = near.clone().requires_grad_(True)
    targets = [Targets(logits=far, row_weight=torch.ones(4)), Targets(logits=near, row_weight=torch.ones(4))]
    loss = soft_loss(obj, student, {}, targets)
    loss.backward()
    assert float(loss) == pytest.approx(0.0, abs=1e-7) and float(student.grad.abs().max()) < 1e-6


def test_closest_correct_with_one_teacher_still_skips_the_rows_it_gets_wrong():
    obj = Objective("sequence", "classification", temperature=2.0, combine="closest")
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 3
    right = torch.tensor([1.0, 0.0, 0.0, 1.0])
    got = soft_loss(obj, student, {}, [Targets(logits=teacher, row_weight=right)])
    mask = right > 0
    want = sequence_kd_loss(student[mask], teacher[mask], 2.0) * 2 / 4
    torch.testing.assert_close(got, want)


def test_closest_correct_is_refused_for_regression():
    from types import SimpleNamespace

    from skdcache.distill.objective import build_objective

    with pytest.raises(SkdError, match="classification only"):
        build_objective(
            "sequence", "regression", [], SimpleNamespace(), temperature=2.0, alpha=0.5, beta=0.0,
            layer_map=None, mode="weight", sampling="closest-correct",
        )  # fmt: skip


# ---- end to end on a tiny team ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("route")
    write_split(root / "train.csv", 96, seed=1, pair=True)
    write_split(root / "validation.csv", 24, seed=2, pair=True)
    teachers = {
        "big": spread(make_model(root / "big", layers=2, hidden=48, seed=1), 8.0),
        "small": spread(make_model(root / "small", layers=1, seed=2), 8.0),
    }
    spec = DataSpec(str(root))
    opts = TargetOptions(max_length=32, batch_size=64, rows_per_block=32, progress=False)
    precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], root / "cache", opts)
    student = no_dropout(make_model(root / "student", layers=1, seed=4))
    return spec, root / "cache", student


def cfg(team, out: Path, **kw) -> TrainConfig:
    spec, cache, student = team
    base = dict(max_steps=6, eval_every=3, batch_size=16, num_workers=0, progress=False, max_length=32, device="cpu")
    return TrainConfig(data=spec, student=str(student), output=str(out), cache=str(cache), **{**base, **kw})


def steps(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval" not in x]


@pytest.mark.parametrize("rule", ["min-ce", "confidence=0.5", "ca-mkd", "smallest-correct", "uniform"])
def test_route_reads_exactly_one_teacher_per_row(team, tmp_path: Path, monkeypatch, rule: str):
    run = prepare(cfg(team, tmp_path / "out", mode="route", sampling=rule))
    calls: list[tuple[str, int]] = []
    read = TeacherCache.read

    def counting(self, rows):
        calls.append((self.name, len(np.asarray(rows).reshape(-1))))
        return read(self, rows)

    monkeypatch.setattr(TeacherCache, "read", counting)
    record = fit(run)
    lines = steps(tmp_path / "out")
    no_teacher = sum(x["teacher_rows"].get("-", 0) for x in lines)
    assert sum(n for _, n in calls) == 6 * 16 - no_teacher  # one read per row that has a teacher, none twice
    assert sum(record["teacher_histogram"].values()) == 6 * 16
    assert record["sampler"]["kind"] == f"route:{rule.split('=')[0]}"
    assert record["sampler"]["teachers"] == [c.name for c in run.caches]  # names the order of mean_probs
    if rule == "min-ce":  # the table's argmax, recomputed from the scores stored beside the caches
        assert record["sampler"]["no_teacher_rows"] == 0


def test_route_draws_agree_across_loader_workers(team, tmp_path: Path):
    train(cfg(team, tmp_path / "w0", mode="route", sampling="confidence"))
    train(cfg(team, tmp_path / "w1", mode="route", sampling="confidence", num_workers=1))
    a, b = steps(tmp_path / "w0"), steps(tmp_path / "w1")
    assert [x["teacher_rows"] for x in a] == [x["teacher_rows"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


def test_route_matches_a_choice_made_by_hand(team, tmp_path: Path):
    run = prepare(cfg(team, tmp_path / "out", mode="route", sampling="min-ce"))
    rows = np.arange(10)
    choice = run.draws(0, rows)
    assert choice.per_row == tuple(run.draws.table[rows].argmax(1).tolist())
    (merged,) = run.source.targets(rows, choice)
    for i, t in enumerate(choice.per_row):
        torch.testing.assert_close(merged.logits[i], run.plan.caches[t].read([rows[i]]).logits[0])


def test_resumed_route_run_equals_an_uninterrupted_one(team, tmp_path: Path, monkeypatch):
    train_module = importlib.import_module("skdcache.train")  # the package exports a function of that name

    def cfg_for(out: Path, **kw) -> TrainConfig:
        return cfg(team, out, mode="route", sampling="confidence", **kw)

    a_out, b_out = tmp_path / "A", tmp_path / "B"
    run_a = train(cfg_for(a_out))

    def crash(run, state, *args, **kwargs):
        evaluate_and_checkpoint(run, state, *args, **kwargs)
        if state.step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(train_module, "evaluate_and_checkpoint", crash)
        with pytest.raises(KeyboardInterrupt):
            train(cfg_for(b_out))
    gc.collect()
    run_b = train(cfg_for(b_out, resume=True))
    a, b = steps(a_out), steps(b_out)
    assert [x["step"] for x in b] == list(range(1, 7))
    assert [x["teacher_rows"] for x in a] == [x["teacher_rows"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    assert run_a["teacher_histogram"] == run_b["teacher_histogram"]
    assert run_a["final"] == pytest.approx(run_b["final"], abs=1e-6)


def test_weight_reads_every_teacher_with_per_row_weights(team, tmp_path: Path):
    run = prepare(cfg(team, tmp_path / "out", mode="weight", sampling="ca-mkd"))
    rows = np.arange(8)
    choice = run.draws(0, rows)
    assert choice.teachers == (0, 1) and len(choice.weights) == 8
    np.testing.assert_allclose(np.array(choice.weights), run.draws.table[rows])
    targets = run.source.targets(rows, choice)
    assert len(targets) == 2 and targets[0].row_weight.shape == (8,)
    record = fit(run)
    assert record["steps"] == 6 and record["sampler"]["kind"] == "weight:ca-mkd"


def test_closest_correct_weight_run_reads_every_teacher_and_trains(team, tmp_path: Path):
    run = prepare(cfg(team, tmp_path / "out", mode="weight", sampling="closest-correct"))
    assert run.objective.combine == "closest"
    rows = np.arange(8)
    targets = run.source.targets(rows, run.draws(0, rows))
    assert len(targets) == 2 and set(np.unique(torch.stack([t.row_weight for t in targets]).numpy())) <= {0.0, 1.0}
    record = fit(run)
    assert record["steps"] == 6 and record["sampler"]["kind"] == "weight:closest-correct"


@pytest.mark.parametrize(
    "kw, fix",
    [
        (dict(mode="skd", sampling="min-ce"), "--mode route"),
        (dict(mode="route", sampling="teacher-rank"), "--sampling"),
        (dict(mode="weight", sampling="min-ce"), "--sampling"),
        (dict(mode="route", sampling="min-ce=2"), "confidence=0.5"),
        (dict(mode="route", sampling="confidence=-1"), "> 0"),
        (dict(mode="route", beta=0.5), "--beta"),
    ],
)
def test_bad_flag_combinations_fail_in_one_line_naming_the_fix(team, tmp_path: Path, kw: dict, fix: str):
    with pytest.raises(SkdError) as err:
        train(cfg(team, tmp_path / "out", **kw))
    text = str(err.value)
    assert "\n" not in text and fix in text, text


def test_draws_without_rows_are_refused_for_route():
    draws = TeacherDraws("route", None, 2, table=np.full((4, 2), 0.5))
    assert draws(0, np.array([1, 2])).per_row is not None
    assert TeacherChoice((0,), (0, 0)).single is None
    assert isinstance(CachedTargets([]).paths, list)


@pytest.mark.parametrize("head", ["mlm", "causal"])
def test_route_on_token_heads_reads_one_teacher_per_row(tmp_path: Path, monkeypatch, head: str):
    write_split(tmp_path / "train.csv", 48, seed=1)
    teachers = {f"{head}{i}": spread(make_model(tmp_path / f"t{i}", head, layers=i, seed=i), 3.0) for i in (1, 2)}
    spec = DataSpec(str(tmp_path), label_column=None)
    opts = TargetOptions(max_length=24, top_k=4, batch_size=64, rows_per_block=32, progress=False)
    precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], tmp_path / "cache", opts)
    student = make_model(tmp_path / "student", head, layers=1, seed=9)
    config = TrainConfig(
        data=spec, student=str(student), output=str(tmp_path / "out"), cache=str(tmp_path / "cache"), mode="route",
        sampling="min-ce", max_steps=3, batch_size=8, num_workers=0, progress=False, max_length=24, device="cpu",
        eval_split=None,
    )  # fmt: skip
    run = prepare(config)
    calls: list[int] = []
    read = TeacherCache.read

    def counting(self, rows):
        calls.append(len(np.asarray(rows).reshape(-1)))
        return read(self, rows)

    monkeypatch.setattr(TeacherCache, "read", counting)
    record = fit(run)
    assert sum(calls) == 3 * 8 and record["steps"] == 3
    assert all(np.isfinite(x["kd"]) for x in steps(tmp_path / "out"))
