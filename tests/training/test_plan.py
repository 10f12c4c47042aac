"""The run plan, checked before any model exists: rows, step budget and held-out rows, the teacher team (one head,
the data's labels, exactly one for `single`), the student head and label count, and the teacher distribution;
every bad combination is one line naming the fix. The first section holds the refusals `skdcache train` gives
through `prepare` on real caches (moved here from tests/test_train.py); the rest calls the plan's parts directly.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_model, write_split
from test_train import config, opts  # the recipe tests' settings, shared

from skdcache import CacheError, DataSpec, SkdError, TeacherSpec, precompute
from skdcache.data.rows import TextRows
from skdcache.sampling.categorical import CategoricalSampler
from skdcache.sampling.factory import team_limit
from skdcache.sampling.learned import LearnedSampler
from skdcache.sampling.student_aware import FitSampler, ScheduleSampler
from skdcache.train import prepare
from skdcache.training import plan
from skdcache.training.config import TrainConfig
from skdcache.training.plan import (
    _num_labels,
    _split_heldout,
    _student_head,
    fixed_sampler,
    open_team,
    plan_run,
    sampler_for_run,
)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


@dataclass
class Team:
    data: DataSpec
    cache: Path
    teachers: dict[str, Path]
    student: Path
    extra: dict = field(default_factory=dict)

    def cfg(self, out: Path, **kw) -> TrainConfig:
        return config(self.data, self.student, out, self.cache, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_split(d / "train.csv", 48, seed=1, pair=True)
    write_split(d / "validation.csv", 16, seed=2, pair=True)
    return d


@pytest.fixture(scope="module")
def seq(tmp_path_factory, data: Path) -> Team:
    """Three tiny sequence teachers a, b, c cached once (the plan reads their manifests, never their weights)."""
    root = tmp_path_factory.mktemp("seq")
    teachers = {name: make_model(root / name, layers=1, hidden=16, seed=i) for i, name in enumerate("abc", 1)}
    spec = DataSpec(str(data))
    results = precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], root / "cache", opts())
    assert [r.status for r in results] == ["computed"] * 3
    return Team(spec, root / "cache", teachers, make_model(root / "student", layers=1, hidden=16, seed=4))


# ---- refusals through `skdcache train`'s prepare (moved from tests/test_train.py) ------------------------------
def test_teacher_not_cached(seq: Team, tmp_path: Path):
    with pytest.raises(CacheError) as info:
        prepare(seq.cfg(tmp_path / "r", teachers=["a", "nope"]))
    msg = one_line(info.value)
    assert "nope" in msg and "precompute" in msg and "a, b, c" in msg


def test_fingerprint_mismatch_names_precompute(seq: Team, data: Path, tmp_path: Path):
    edited = shutil.copytree(data, tmp_path / "edited")
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[5][0] = rows[5][0] + " really"
    with open(edited / "train.csv", "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    spec = DataSpec(str(edited))
    with pytest.raises(SkdError) as info:
        prepare(config(spec, seq.student, tmp_path / "r", seq.cache))
    assert "precompute" in one_line(info.value)
    with pytest.raises(CacheError) as info:
        prepare(config(spec, seq.student, tmp_path / "r", seq.cache, teachers=["a"]))
    msg = one_line(info.value)
    assert "precompute" in msg and "not cached for dataset" in msg


def test_label_count_mismatch(seq: Team, tmp_path: Path):
    """A 3-label teacher and 2-class data: precompute refuses it, so training finds no teacher for that data."""
    d = tmp_path / "two"
    d.mkdir()
    for split, n in (("train", 40), ("validation", 10)):
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            w.writerow(["text", "label"])
            w.writerows([[f"good movie {i}", ["negative", "positive"][i % 2]] for i in range(n)])
    spec = DataSpec(str(d))
    with pytest.raises(SkdError) as info:
        precompute(spec, [TeacherSpec("a", str(seq.teachers["a"]))], tmp_path / "cache", opts())
    msg = one_line(info.value)
    assert "3 labels" in msg and "2" in msg
    with pytest.raises(CacheError) as info:
        prepare(config(spec, seq.student, tmp_path / "r", seq.cache, teachers=["a"]))
    assert "precompute" in one_line(info.value)


@pytest.mark.parametrize(
    ("sampling", "teachers", "match"),
    [
        ("weights=0.5", ["a", "b"], "1 weights for 2 teachers"),
        ("weights=0.2,0.3,0.5", ["a", "b"], "3 weights for 2 teachers"),
        ("weights=0,0", ["a", "b"], "sum to 0"),
        ("weights=-1,2", ["a", "b"], ">= 0"),
        ("bogus", None, "unknown sampler kind"),
    ],
)
def test_bad_sampling(seq: Team, tmp_path: Path, sampling: str, teachers, match: str):
    with pytest.raises(SkdError, match=match) as info:
        prepare(seq.cfg(tmp_path / "r", sampling=sampling, teachers=teachers))
    assert sampling in one_line(info.value)


def test_non_numeric_weights_are_a_one_line_error(seq: Team, tmp_path: Path):
    with pytest.raises(SkdError) as info:
        prepare(seq.cfg(tmp_path / "r", sampling="weights=a,b", teachers=["a", "b"]))
    assert "weights=a,b" in one_line(info.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(mode="single"), "exactly one teacher"),
        (dict(mode="bogus"), "--mode"),
    ],
)
def test_bad_mode_and_options(seq: Team, tmp_path: Path, kw: dict, match: str):
    with pytest.raises(SkdError, match=match) as info:
        prepare(seq.cfg(tmp_path / "r", **kw))
    one_line(info.value)


# ---- plan_run: rows and step budget, without teachers ----------------------------------------------------------------
def labelled(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data": DataSpec(str(data)), "student": "s", "output": str(out), "mode": "none", **kw})


def test_the_step_budget(data: Path, tmp_path: Path):
    """48 rows in batches of 16 are 3 micro-batches an epoch; with grad_accum 2 an epoch is 1 optimizer step."""
    p = plan_run(labelled(data, tmp_path, batch_size=16, epochs=2.5))
    assert len(p.rows) == 48 and p.schedule.steps_per_epoch == 3
    assert p.total_steps == math.ceil(2.5 * 3) == 8 and p.eval_every == 3
    assert (p.head, p.task, p.num_labels, p.caches, p.heldout) == ("sequence", "classification", 3, [], None)
    p = plan_run(labelled(data, tmp_path, batch_size=16, epochs=2.5, grad_accum=2))
    assert p.total_steps == 3 and p.eval_every == 1  # ceil(2.5 * 1)
    p = plan_run(labelled(data, tmp_path, batch_size=16, epochs=0.01))
    assert p.total_steps == 1  # never zero steps
    p = plan_run(labelled(data, tmp_path, batch_size=16, max_steps=50, eval_every=7))
    assert p.total_steps == 50 and p.eval_every == 7
    p = plan_run(labelled(data, tmp_path, batch_size=1000))  # more than the rows: one batch of every row
    assert p.schedule.batch_size == 48 and p.total_steps == 3


def test_evaluation_and_test_splits(data: Path, tmp_path: Path):
    p = plan_run(labelled(data, tmp_path, eval_rows=5, test_split="validation"))
    assert len(p.eval_rows) == 5 and len(p.test_rows) == 16
    assert p.eval_rows.texts == p.test_rows.texts[:5]
    assert plan_run(labelled(data, tmp_path, eval_split="test")).eval_rows is None  # no such split: no selection
    assert plan_run(labelled(data, tmp_path, eval_split=None)).eval_rows is None
    assert plan_run(labelled(data, tmp_path, test_split="validation"), rank=1, world=2).test_rows is None  # rank 0


@pytest.mark.parametrize(
    ("kw", "world", "message"),
    [
        (dict(mode="bogus"), 1, "--mode 'bogus': choose one of skd, single, average, none, online, route, weight"),
        (dict(batch_size=10), 4, "--batch-size 10 is the global batch: use a multiple of 4 ranks"),
        (dict(batch_size=100), 5, "48 rows give batches of 48: too few for 5 ranks"),  # 100 = 5 x 20, 48 rows
        (dict(full_logits=True), 1, "--full-logits is for --mode online with MLM/causal teachers"),
        (dict(mode="skd", cache="/nonexistent/cache"), 1, "no cache root at /nonexistent/cache; check --cache"),
    ],
)
def test_plan_refusals(data: Path, tmp_path: Path, kw: dict, world: int, message: str):
    with pytest.raises(SkdError) as info:
        plan_run(labelled(data, tmp_path, **kw), world=world)
    assert one_line(info.value).startswith(message)


def test_unlabelled_data_without_teachers(data: Path, tmp_path: Path):
    spec = DataSpec(str(data), label_column=None)
    cfg = TrainConfig(data=spec, student="s", output=str(tmp_path), mode="none")
    with pytest.raises(SkdError) as info:
        plan_run(cfg)
    assert one_line(info.value) == "unlabelled data and no teacher: pass --student-head mlm|causal"
    cfg.student_head = "sequence"
    with pytest.raises(SkdError, match="unlabelled data: a sequence student needs --label-column or cached teachers"):
        plan_run(cfg)
    cfg.student_head = "causal"
    p = plan_run(cfg)
    assert (p.head, p.task, p.num_labels) == ("causal", "lm", None)


# ---- learned / student-fit held-out rows ---------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "k"), [(10, 8), (100, 8), (1000, 20), (5000, 100), (100_000, 128)])
def test_heldout_rows_are_a_fixed_disjoint_slice(n: int, k: int):
    heldout, train = _split_heldout(n, seed=3)
    assert len(heldout) == k and len(train) == n - k  # 2% of the rows, at least 8 and at most 128
    assert np.array_equal(np.sort(np.concatenate([heldout, train])), np.arange(n))
    assert np.all(np.diff(heldout) > 0) and np.all(np.diff(train) > 0)
    again, _ = _split_heldout(n, seed=3)
    assert np.array_equal(heldout, again)  # a resumed run holds out the same rows
    if n > 10:
        assert not np.array_equal(heldout, _split_heldout(n, seed=4)[0])


# ---- the team -------------------------------------------------------------------------------------------------------
def rows(labels: list[str] | None = ("neg", "pos"), n: int = 4, chat: bool = False) -> TextRows:
    return TextRows(
        DataSpec("data"),
        [f"row {i}" for i in range(n)],
        None,
        np.arange(n) % 2 if labels else None,
        list(labels) if labels else None,
        "classification" if labels else "unlabelled",
        fingerprint="fp" * 16,
        messages=[[{"role": "user", "content": "x"}]] * n if chat else None,
    )


class FakeCache:
    """What the plan reads of a teacher cache."""

    opened: list[FakeCache] = []

    def __init__(self, path: Path, head: str = "sequence", labels=("neg", "pos"), size: int | None = 100, metric=None):
        self.path, self.name = Path(path), Path(path).name
        self.targets = SimpleNamespace(head=head)
        self.manifest = SimpleNamespace(
            dataset=SimpleNamespace(label_names=list(labels) if labels else None),
            teacher=SimpleNamespace(num_parameters=size, num_labels=5),
            metric=SimpleNamespace(value=metric) if metric is not None else None,
        )
        self.checked: list[tuple[str, int]] = []

    def check_dataset(self, fingerprint: str, n_rows: int) -> None:
        self.checked.append((fingerprint, n_rows))


@pytest.fixture
def team(monkeypatch, tmp_path: Path):
    """open_team over fake caches: `team({"a": dict(head=...)})` makes the catalog find them."""

    def install(specs: dict[str, dict]):
        found = {name: tmp_path / name for name in specs}
        opened: list[FakeCache] = []

        def find(root, fingerprint, names):
            assert root == tmp_path and fingerprint == "fp" * 16
            return found if names is None else {n: found[n] for n in names}

        def open_cache(path):
            opened.append(FakeCache(path, **specs[Path(path).name]))
            return opened[-1]

        monkeypatch.setattr(plan, "find_teacher_caches", find)
        monkeypatch.setattr(plan, "TeacherCache", open_cache)
        return opened

    return install


def test_open_team_checks_every_cache_against_the_rows(team, tmp_path: Path):
    opened = team({"a": {}, "b": {}})
    caches = open_team(rows(n=6), str(tmp_path), None)
    assert [c.name for c in caches] == ["a", "b"] and caches == opened
    assert all(c.checked == [("fp" * 16, 6)] for c in caches)
    assert [c.name for c in open_team(rows(), str(tmp_path), ["b"], single=True)] == ["b"]


@pytest.mark.parametrize(
    ("specs", "kw", "message"),
    [
        ({"a": {}, "b": {}}, dict(single=True), "--mode single needs exactly one teacher, got ['a', 'b']"),
        ({}, {}, "no teacher cached for this data in "),
        ({"a": {}, "m": dict(head="mlm")}, {}, "teachers mix heads ['mlm', 'sequence']; distil from teachers of one"),
        ({"a": {}, "b": dict(labels=("pos", "neg"))}, {}, "teacher b was cached with labels ['pos', 'neg']"),
    ],
)
def test_open_team_refusals(team, tmp_path: Path, specs: dict, kw: dict, message: str):
    team(specs)
    with pytest.raises(SkdError) as info:
        open_team(rows(), str(tmp_path), None, **kw)
    assert one_line(info.value).startswith(message)


def test_token_level_teachers_need_no_labels(team, tmp_path: Path):
    team({"m1": dict(head="mlm", labels=None), "m2": dict(head="mlm", labels=None)})
    assert len(open_team(rows(labels=("x", "y", "z")), str(tmp_path), None)) == 2


def test_student_head_and_label_count():
    cfg = TrainConfig(data=DataSpec("d"), student="s", output="o")
    mlm = [FakeCache(Path("m"), head="mlm", labels=None)]
    seq = [FakeCache(Path("s"))]
    assert _student_head(cfg, rows(), mlm) == "mlm"  # auto: the teachers' head
    assert _student_head(cfg, rows(), []) == "sequence"
    explicit = TrainConfig(data=DataSpec("d"), student="s", output="o", student_head="causal")
    assert _student_head(explicit, rows(), mlm) == "causal"  # the flag wins over the teachers
    assert _num_labels(rows(), "sequence", seq) == 2
    assert _num_labels(rows(labels=None), "sequence", seq) == 5  # pure distillation: the teachers' head size
    assert _num_labels(rows(labels=None), "mlm", mlm) is None


# ---- the teacher distribution --------------------------------------------------------------------------------------
def caches(n: int, sizes=None, metrics=None) -> list[FakeCache]:
    return [
        FakeCache(
            Path(f"t{i}"),
            size=(sizes[i] if sizes else 100 + i),
            metric=(metrics[i] if metrics else None),
        )
        for i in range(n)
    ]


def test_fixed_samplers():
    weights = fixed_sampler("weights=1,3", caches(2), seed=0, temperature=0.05)
    assert isinstance(weights, CategoricalSampler) and weights.probs().tolist() == [0.25, 0.75]
    assert fixed_sampler("uniform", caches(4), 0, 0.05).probs().tolist() == [0.25] * 4
    metrics = [0.80, 0.85, 0.70]
    rank = fixed_sampler("teacher-rank", caches(3, metrics=metrics), 0, temperature=0.05)
    expected = np.exp(np.array(metrics) / 0.05 - 0.85 / 0.05)
    assert rank.kind == "teacher-rank" and rank.probs() == pytest.approx(expected / expected.sum(), rel=1e-12)
    student = fixed_sampler("student-rank", caches(2), 0, temperature=0.1, metrics=[0.5, 0.6])
    assert student.probs()[1] / student.probs()[0] == pytest.approx(math.e)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ("teacher-rank", "teacher-rank needs a validation metric; ['t1'] were cached without labelled eval"),
        ("learned", "--sampling learned needs the training loop's pilots, held-out rows or step budget"),
        ("small-to-large", "--sampling small-to-large needs the training loop's"),
        ("student-fit", "--sampling student-fit needs the training loop's"),
        ("student-rank", "--sampling student-rank needs the training loop's"),
        ("weights=1,x", "--sampling weights=1,x: write weights=0.2,0.3,0.5 (one number per teacher)"),
        ("weights=", "--sampling weights=: write weights=0.2,0.3,0.5"),
        ("weights=1,nan", "--sampling weights=1,nan: weights must be finite"),
        ("uniform-ish", "--sampling uniform-ish: unknown sampler kind 'uniform-ish'"),
    ],
)
def test_fixed_sampler_refusals(sampling: str, message: str):
    team = caches(2, metrics=[0.5, None])  # t1 was cached without a labelled eval split
    with pytest.raises(SkdError) as info:
        fixed_sampler(sampling, team, 0, 0.05)
    assert one_line(info.value).startswith(message)


def run_plan(n: int, total_steps: int = 40, **kw) -> SimpleNamespace:
    plan = dict(caches=caches(n, **kw), total_steps=total_steps, eval_every=10, rows="rows", eval_rows="eval rows")
    return SimpleNamespace(**plan)


def cfg_for(sampling: str, mode: str = "skd", **kw) -> TrainConfig:
    return TrainConfig(data=DataSpec("d"), student="s", output="o", mode=mode, sampling=sampling, **kw)


def no_pilot(cfg):
    raise AssertionError("no pilot should run")


def test_sampler_for_run(monkeypatch):
    assert sampler_for_run(cfg_for("uniform", mode="average"), run_plan(3), no_pilot) is None
    assert sampler_for_run(cfg_for("weights=1,2", mode="single"), run_plan(1), no_pilot) is None
    learned = sampler_for_run(cfg_for("learned", learned_lr=0.3), run_plan(3), no_pilot)
    assert isinstance(learned, LearnedSampler) and learned.state_dict()["lr"] == 0.3
    fit = sampler_for_run(cfg_for("student-fit", mode="online"), run_plan(4), no_pilot)
    assert isinstance(fit, FitSampler) and len(fit.probs()) == 4
    schedule = sampler_for_run(cfg_for("small-to-large"), run_plan(3, sizes=[300, 100, 200]), no_pilot)
    assert isinstance(schedule, ScheduleSampler)
    assert schedule.probs_at(0).tolist() == [0, 1, 0] and schedule.probs_at(39).tolist() == [1, 0, 0]
    uniform = sampler_for_run(cfg_for("uniform"), run_plan(3), no_pilot)
    assert uniform.kind == "uniform"


@pytest.mark.parametrize(("pilot_steps", "steps"), [(None, 20), (7, 7)])
def test_student_rank_runs_pilots_for_half_the_run(monkeypatch, pilot_steps: int | None, steps: int):
    seen = []

    def pilots(cfg, rows, eval_rows, team, n_steps, run):
        seen.append((rows, eval_rows, [c.name for c in team], n_steps, run))
        return [0.6, 0.5]

    monkeypatch.setattr(plan, "pilot_metrics", pilots)
    cfg = cfg_for("student-rank", pilot_steps=pilot_steps, sampling_temperature=0.1)
    sampler = sampler_for_run(cfg, run_plan(2, total_steps=41), no_pilot)
    assert seen == [("rows", "eval rows", ["t0", "t1"], steps, no_pilot)]
    assert sampler.kind == "student-rank" and sampler.probs()[0] / sampler.probs()[1] == pytest.approx(math.e)


@pytest.mark.parametrize(("sampling", "most"), [("learned", 50), ("student-fit", 20)])
def test_samplers_with_a_floor_take_a_bounded_team(sampling: str, most: int):
    assert sampler_for_run(cfg_for(sampling), run_plan(most), no_pilot) is not None
    with pytest.raises(SkdError) as info:
        sampler_for_run(cfg_for(sampling), run_plan(most + 1), no_pilot)
    floor = "2%" if sampling == "learned" else "5%"
    assert one_line(info.value) == (
        f"--sampling {sampling} draws every teacher at least {floor} of the time, so it takes at most {most} "
        f"teachers, not {most + 1}; pass --teachers with {most} or fewer, or another --sampling"
    )
    assert team_limit(sampling, most, LearnedSampler if sampling == "learned" else FitSampler) == most


def test_small_to_large_says_when_team_order_decides(caplog):
    with caplog.at_level(logging.WARNING, logger="skdcache.training.plan"):
        sampler_for_run(cfg_for("small-to-large"), run_plan(4, sizes=[100, None, 100, 300]), no_pilot)
    assert "no recorded size for t1; they come first" in caplog.text
    assert "t0, t2 have the same size; they keep team order" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skdcache.training.plan"):
        sampler_for_run(cfg_for("small-to-large"), run_plan(3, sizes=[3, 1, 2]), no_pilot)
    assert caplog.text == ""
