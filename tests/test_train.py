"""`skdcache train` end to end on tiny models: cache vs online, no teacher in cache modes, average, resume,
sampling, every target path reducing the loss, bad input, the saved student and the CLI."""

from __future__ import annotations

import gc
import importlib
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, make_model, no_dropout, spread, write_split

import skdcache.targets.live
import skdcache.teacher.blocks
import skdcache.teacher.load
import skdcache.teacher.reduce
from skdcache import DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.distill.objective import step_loss
from skdcache.targets.sources import CachedTargets, TeacherChoice
from skdcache.train import evaluate_and_checkpoint, fit, prepare, train
from skdcache.training.config import TrainConfig
from skdcache.training.loader import StepBatches, student_batch
from skdcache.training.run_record import Run

MAX_LENGTH = 32
TOP_K = 8


# ---- helpers ------------------------------------------------------------------------------------------------
def opts(**kw) -> TargetOptions:
    base = dict(max_length=MAX_LENGTH, top_k=TOP_K, batch_size=64, rows_per_block=64, progress=False)
    return TargetOptions(**{**base, **kw})


def config(data: DataSpec, student: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(
        data=data,
        student=str(student),
        output=str(out),
        cache=str(cache),
        max_steps=8,
        batch_size=16,
        num_workers=0,
        progress=False,
        eval_every=4,
        max_length=MAX_LENGTH,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def step_lines(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval" not in x]


def eval_lines(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval" in x]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


@torch.no_grad()
def fixed_batch_loss(trainer: Run, rows: np.ndarray) -> dict[str, float]:
    """The objective (and its parts) on fixed rows, averaged over the team, dropout off: comparable across training."""
    model = trainer.model
    was_training = model.training
    model.eval()
    batch = student_batch(trainer.inputs, rows)
    outputs = model(**model_inputs(batch), output_hidden_states=trainer.cfg.beta > 0)
    results = []
    for i, cache in enumerate(trainer.caches):
        loss, parts = step_loss(trainer.objective, outputs, batch, [cache.read(rows)], trainer.projector, i)
        results.append({"loss": float(loss), **parts})
    model.train(was_training)
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


def train_on_fixed_batch(cfg: TrainConfig, rows: np.ndarray = np.arange(16)) -> tuple[dict, dict, Run, dict]:
    """Objective on fixed training rows before and after a short, seeded run with a high learning rate."""
    trainer = prepare(cfg)
    before = fixed_batch_loss(trainer, rows)
    run = fit(trainer)
    after = fixed_batch_loss(trainer, rows)
    return before, after, trainer, run


@dataclass
class Team:
    data: DataSpec
    cache: Path
    teachers: dict[str, Path]
    student: Path
    extra: dict = field(default_factory=dict)

    def cfg(self, out: Path, **kw) -> TrainConfig:
        return config(self.data, self.student, out, self.cache, **kw)


# ---- fixtures (module-scoped: each team is built and precomputed once) ---------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_split(d / "train.csv", 150, seed=1, pair=True)
    write_split(d / "validation.csv", 40, seed=2, pair=True)
    return d


@pytest.fixture(scope="module")
def seq(tmp_path_factory, data: Path) -> Team:
    """Three sequence teachers of different depths and widths, cached once; two students (with/without dropout)."""
    root = tmp_path_factory.mktemp("seq")
    teachers = {
        "a": spread(make_model(root / "a", layers=2, seed=1), 8.0),
        "b": spread(make_model(root / "b", layers=1, seed=2), 8.0),
        "c": spread(make_model(root / "c", layers=2, hidden=48, seed=3), 8.0),
    }
    spec = DataSpec(str(data))
    results = precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], root / "cache", opts())
    assert [r.status for r in results] == ["computed"] * 3
    student = make_model(root / "student", layers=1, seed=4)
    still = no_dropout(make_model(root / "still", layers=1, seed=4))
    return Team(spec, root / "cache", teachers, student, {"still": still, "root": root})


@pytest.fixture(scope="module")
def mlm(tmp_path_factory, data: Path) -> Team:
    root = tmp_path_factory.mktemp("mlm")
    teachers = {
        "m1": spread(make_model(root / "m1", "mlm", layers=2, seed=11), 3.0),
        "m2": spread(make_model(root / "m2", "mlm", layers=1, seed=12), 3.0),
    }
    spec = DataSpec(str(data), label_column=None)
    precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], root / "cache", opts())
    return Team(spec, root / "cache", teachers, make_model(root / "student", "mlm", layers=1, seed=13))


@pytest.fixture(scope="module")
def causal(tmp_path_factory, data: Path) -> Team:
    root = tmp_path_factory.mktemp("causal")
    teachers = {
        "l1": spread(make_model(root / "l1", "causal", layers=2, seed=31), 3.0),
        "l2": spread(make_model(root / "l2", "causal", layers=1, seed=32), 3.0),
    }
    spec = DataSpec(str(data), label_column=None)
    precompute(spec, [TeacherSpec(n, str(p)) for n, p in teachers.items()], root / "cache", opts())
    return Team(spec, root / "cache", teachers, make_model(root / "student", "causal", layers=1, seed=33))


@pytest.fixture(scope="module")
def hidden(tmp_path_factory, data: Path, seq: Team) -> Team:
    """Teachers of two depths and widths cached with every hidden layer, once CLS-only and once every token."""
    root = tmp_path_factory.mktemp("hidden")
    deep = spread(make_model(root / "deep", layers=2, hidden=48, seed=41), 3.0)
    shallow = spread(make_model(root / "shallow", layers=1, hidden=32, seed=42), 3.0)
    for tokens in ("cls", "all"):
        team = [TeacherSpec(f"deep_{tokens}", str(deep)), TeacherSpec(f"shallow_{tokens}", str(shallow))]
        precompute(seq.data, team, root / "cache", opts(hidden_layers="all", hidden_tokens=tokens))
    return Team(seq.data, root / "cache", {"deep": deep, "shallow": shallow}, seq.student)


@pytest.fixture(scope="module")
def skd_run(tmp_path_factory, seq: Team) -> Path:
    """One finished `skd` run from the cache, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("runs") / "skd"
    train(seq.cfg(out))
    return out


# ---- 1. the cache and live teachers give the same steps --------------------------------------------------------
def test_skd_from_cache_equals_online_sequence(seq: Team, tmp_path: Path):
    """Same seed: same teacher at every step and the same losses (the cache path read in a worker process)."""
    cached = train(seq.cfg(tmp_path / "skd", num_workers=1))
    online = train(seq.cfg(tmp_path / "online", mode="online"))
    a, b = step_lines(tmp_path / "skd"), step_lines(tmp_path / "online")
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 9))
    assert [x["teacher"] for x in a] == [x["teacher"] for x in b]
    assert len({x["teacher"] for x in a}) > 1  # the team is really sampled
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert max(x["kd"] for x in a) > 1e-2  # the teachers carry signal: the comparison is not 0 == 0
    assert cached["teacher_histogram"] == online["teacher_histogram"]
    assert cached["final"] == pytest.approx(online["final"], abs=1e-6)


@pytest.mark.parametrize("team", ["mlm", "causal"])
def test_skd_from_cache_equals_online_token_level_at_t2(team: str, request, tmp_path: Path):
    """Token-level top-k targets at the default T = 2: the same positions, top-k and tail, hence the same losses."""
    team = request.getfixturevalue(team)
    train(team.cfg(tmp_path / "skd", temperature=2.0))
    train(team.cfg(tmp_path / "online", mode="online", temperature=2.0))
    a, b = step_lines(tmp_path / "skd"), step_lines(tmp_path / "online")
    assert [x["teacher"] for x in a] == [x["teacher"] for x in b]
    assert len({x["teacher"] for x in a}) == 2
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert max(x["kd"] for x in a) > 1e-2


def test_causal_teams_get_a_teacher_metric_so_teacher_rank_works(causal: Team, tmp_path: Path):
    """Precompute scores causal teachers by next-token accuracy on the validation split, as train scores students."""
    from skdcache.cache.catalog import list_caches

    metrics = {e.name: e.manifest.metric for e in list_caches(causal.cache)}
    assert set(metrics) == {"l1", "l2"}
    assert all(m is not None and m.name == "token_accuracy" and 0 <= m.value <= 1 for m in metrics.values())
    record = train(causal.cfg(tmp_path / "rank", sampling="teacher-rank", max_steps=2))
    assert record["steps"] == 2 and sum(record["teacher_histogram"].values()) == 2


def test_online_targets_equal_cached_targets_mlm(mlm: Team, tmp_path: Path):
    """What `online` computes for a batch (masked positions, top-k ids, fp16 log-probs, tail) is the cached data."""
    from skdcache.targets.live import LiveTargets

    trainer = prepare(mlm.cfg(tmp_path / "r"))
    online = LiveTargets(trainer.caches, trainer.plan.rows, trainer.device)
    rows = np.array([7, 3, 120, 41, 0, 99, 64, 65])
    for i, cache in enumerate(trainer.caches):
        (live,), cached = online.targets(rows, TeacherChoice((i,))), cache.read(rows)
        assert torch.equal(live.token_counts, cached.token_counts) and int(live.token_counts.sum()) >= len(rows)
        assert torch.equal(live.positions, cached.positions)
        assert torch.equal(live.topk_ids.long(), cached.topk_ids)
        torch.testing.assert_close(live.topk_logprobs, cached.topk_logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(live.tail_logmass, cached.tail_logmass, rtol=0, atol=1e-5)
        # the student's masked positions (target_mask) are the teacher's cached ones, row by row
        batch = student_batch(trainer.inputs, rows)
        assert int(batch["target_mask"].sum()) == int(cached.token_counts.sum())
        flat = torch.cat([torch.nonzero(m).flatten() for m in batch["target_mask"]])
        assert torch.equal(flat, cached.positions)


def test_full_logits_online_equals_cache_with_the_whole_vocabulary(causal: Team, tmp_path: Path):
    """`online --full-logits` (KL over V) equals top-k distillation when k = V (every bucket a token, at T = 1);
    only the cache's float16 rounding separates them. With k = 8 the two losses differ (top-k is a bound)."""
    vocab = json.loads((causal.teachers["l1"] / "config.json").read_text())["vocab_size"]
    spec = DataSpec(str(causal.data.source), label_column=None)
    full_cache = tmp_path / "k=V"
    precompute(spec, [TeacherSpec("l1", str(causal.teachers["l1"]))], full_cache, opts(top_k=vocab))
    kw = dict(mode="single", teachers=["l1"], temperature=1.0, alpha=1.0, max_steps=4)
    train(config(spec, causal.student, tmp_path / "kV", full_cache, **kw))
    train(config(spec, causal.student, tmp_path / "full", full_cache, **{**kw, "mode": "online"}, full_logits=True))
    train(causal.cfg(tmp_path / "k8", **kw))
    kv, full, k8 = (step_lines(tmp_path / n) for n in ("kV", "full", "k8"))
    assert [x["kd"] for x in full] == pytest.approx([x["kd"] for x in kv], rel=2e-3)
    assert full[0]["kd"] > k8[0]["kd"] + 1e-3  # the 8-bucket KL really is smaller: the test can tell them apart
    with pytest.raises(SkdError, match="--full-logits"):
        prepare(causal.cfg(tmp_path / "bad", full_logits=True))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_teacher_as_its_own_student_has_zero_token_kd(causal: Team, tmp_path: Path, temperature: float):
    """The top-k invariant end to end: a student identical to the cached teacher (k = 8 < V) starts at zero KD
    loss at every temperature; only the cache's float16 rounding is left."""
    student = tmp_path / "same"
    shutil.copytree(causal.teachers["l1"], student)
    no_dropout(student)
    kw = dict(mode="single", teachers=["l1"], alpha=1.0, temperature=temperature, max_steps=1, lr=1e-12)
    train(config(causal.data, student, tmp_path / "run", causal.cache, **kw))
    assert abs(step_lines(tmp_path / "run")[0]["kd"]) < 2e-3


# ---- 2. no teacher model in cache modes ---------------------------------------------------------------------------
def test_cache_modes_construct_no_teacher(seq: Team, tmp_path: Path, monkeypatch):
    """Every way a model gets built is watched; teacher directories appear only in `online` mode."""
    import transformers
    from transformers import PreTrainedModel

    built: list[str] = []
    loaded: list[str] = []
    forwards: list[int] = []

    def watch_auto(cls_name: str):
        auto = getattr(transformers, cls_name)
        original = auto.from_pretrained

        def from_pretrained(cls, path, *args, **kwargs):
            built.append(str(Path(path).resolve()))
            return original(path, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(from_pretrained))

    for name in ("AutoModelForSequenceClassification", "AutoModelForMaskedLM", "AutoModelForCausalLM"):
        watch_auto(name)
    original_pm = PreTrainedModel.from_pretrained.__func__

    def pm_from_pretrained(cls, path, *args, **kwargs):
        built.append(str(Path(path).resolve()))
        return original_pm(cls, path, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(pm_from_pretrained))
    original_load = skdcache.teacher.load.load_teacher

    def load_teacher(spec, *args, **kwargs):
        loaded.append(spec.name)
        return original_load(spec, *args, **kwargs)

    original_forward = skdcache.teacher.reduce.teacher_forward

    def teacher_forward(*args, **kwargs):
        forwards.append(1)
        return original_forward(*args, **kwargs)

    precompute_module = importlib.import_module("skdcache.precompute")  # `skdcache.precompute` is the function
    for module in (skdcache.targets.live, precompute_module):
        monkeypatch.setattr(module, "load_teacher", load_teacher)
    for module in (skdcache.targets.live, skdcache.teacher.blocks):
        monkeypatch.setattr(module, "teacher_forward", teacher_forward)

    teacher_dirs = {str(p.resolve()) for p in seq.teachers.values()}
    student_dir = str(seq.student.resolve())

    def teachers_built() -> list[str]:
        return [p for p in built if p in teacher_dirs]

    for mode, teachers in (("skd", None), ("single", ["b"]), ("average", None)):
        run = train(seq.cfg(tmp_path / mode, mode=mode, teachers=teachers, max_steps=4))
        assert run["steps"] == 4
        assert teachers_built() == [] and loaded == [] and forwards == [], mode
    assert built.count(student_dir) >= 3  # the watch sees from_pretrained: the student went through it 3 times
    assert len(step_lines(tmp_path / "average")) == 4

    train(seq.cfg(tmp_path / "online", mode="online", max_steps=4))
    assert sorted(loaded) == ["a", "b", "c"]
    assert set(teachers_built()) == teacher_dirs
    assert len(forwards) == 4


def test_single_and_average_read_the_expected_teachers(seq: Team, tmp_path: Path):
    single = train(seq.cfg(tmp_path / "single", mode="single", teachers=["c"], max_steps=4))
    assert single["teacher_histogram"] == {"c": 4} and single["sampler"] is None
    assert [t["name"] for t in single["teachers"]] == ["c"]
    average = train(seq.cfg(tmp_path / "average", mode="average", max_steps=4))
    assert average["teacher_histogram"] == {} and [t["name"] for t in average["teachers"]] == ["a", "b", "c"]
    assert all("teacher" not in x and x["kd"] > 0 for x in step_lines(tmp_path / "average"))


# ---- 3. average = the mean of the teachers' soft targets ---------------------------------------------------------
def test_average_is_the_mean_of_the_teachers_targets(seq: Team, tmp_path: Path):
    trainer = prepare(seq.cfg(tmp_path / "avg", mode="average", temperature=2.0, alpha=0.7))
    source = CachedTargets([str(c.path) for c in trainer.caches])
    dataset = StepBatches(trainer.inputs, trainer.plan.schedule, 0, 1, read_ahead=(trainer.draws, source))
    batch = dataset[0]
    targets = batch["targets"]
    assert isinstance(targets, list) and len(targets) == 3  # average reads every teacher
    trainer.model.eval()
    with torch.no_grad():
        outputs = trainer.model(**model_inputs(batch))
    loss, parts = step_loss(trainer.objective, outputs, batch, targets)

    T, alpha = 2.0, 0.7
    s = outputs.logits.double()
    rows = batch["rows"].numpy()
    teacher_logits = [torch.from_numpy(c.read(rows).logits.numpy()).double() for c in trainer.caches]
    mixture = torch.stack([F.softmax(t / T, dim=-1) for t in teacher_logits]).mean(0)
    log_q = F.log_softmax(s / T, dim=-1)
    kl = (mixture * (mixture.log() - log_q)).sum(-1).mean() * T**2
    ce = F.cross_entropy(s, batch["labels"])
    assert parts["kd"] == pytest.approx(float(kl), rel=1e-5, abs=1e-7)
    assert float(loss) == pytest.approx(float(alpha * kl + (1 - alpha) * ce), rel=1e-5)

    # the mixture is not the mean of the per-teacher losses: the check above can tell them apart
    per_teacher = [
        ((F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - log_q)).sum(-1).mean() * T**2) for t in teacher_logits
    ]
    assert abs(float(torch.stack(per_teacher).mean()) - float(kl)) > 1e-3


# ---- 4. resume ------------------------------------------------------------------------------------------------
RESUME = dict(max_steps=6, eval_every=3)  # checkpoints at 3 and 6; run B stops after the first


def _crash_after_checkpoint(monkeypatch, at_step: int) -> None:
    train_module = importlib.import_module("skdcache.train")  # the package exports a function of that name

    def evaluate_and_save(run, state, *args, **kwargs):
        evaluate_and_checkpoint(run, state, *args, **kwargs)
        if state.step == at_step:
            raise KeyboardInterrupt  # the checkpoint of `at_step` is on disk, nothing later is

    monkeypatch.setattr(train_module, "evaluate_and_checkpoint", evaluate_and_save)


def _interrupted_then_resumed(cfg_for, tmp_path: Path, monkeypatch) -> tuple[dict, dict, Path, Path]:
    a_out, b_out = tmp_path / "A", tmp_path / "B"
    run_a = train(cfg_for(a_out))
    with monkeypatch.context() as m:
        _crash_after_checkpoint(m, 3)
        with pytest.raises(KeyboardInterrupt):
            train(cfg_for(b_out))
    gc.collect()  # close the interrupted run's log handle before the resumed run rewrites the log
    assert json.loads((b_out / "checkpoint" / "trainer.json").read_text())["step"] == 3
    assert not (b_out / "run.json").exists()
    run_b = train(cfg_for(b_out, resume=True))
    return run_a, run_b, a_out, b_out


def _assert_same_run(run_a: dict, run_b: dict, a_out: Path, b_out: Path) -> None:
    a, b = step_lines(a_out), step_lines(b_out)
    assert [x["step"] for x in b] == list(range(1, 7))  # no step lost or logged twice
    assert [x.get("teacher") for x in a] == [x.get("teacher") for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6), x["step"]
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12)
        assert x.get("probs") == y.get("probs")
    assert [e["step"] for e in eval_lines(b_out)] == [3, 6]
    assert run_b["steps"] == 6
    assert run_a["teacher_histogram"] == run_b["teacher_histogram"]
    assert run_a["final"] == pytest.approx(run_b["final"], abs=1e-6)
    assert run_a["sampler"] == run_b["sampler"]
    assert run_a["learned_history"] == run_b["learned_history"]
    wa = torch.load(a_out / "checkpoint" / "state.pt", weights_only=True)["model"]
    wb = torch.load(b_out / "checkpoint" / "state.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("sampling", ["uniform", "learned", "student-fit", "small-to-large"])
def test_resume_reproduces_an_uninterrupted_run(seq: Team, tmp_path: Path, monkeypatch, sampling: str):
    """Model, optimizer, scheduler, data position and sampler state (learned: theta and baseline) are restored.

    The student has no dropout here, so this isolates everything but the RNG (see the test below for that).
    """
    still = seq.extra["still"]

    def cfg_for(out: Path, **kw) -> TrainConfig:
        return config(seq.data, still, out, seq.cache, sampling=sampling, learned_lr=5.0, **RESUME, **kw)

    run_a, run_b, a_out, b_out = _interrupted_then_resumed(cfg_for, tmp_path, monkeypatch)
    _assert_same_run(run_a, run_b, a_out, b_out)
    if sampling == "learned":
        assert len(run_a["learned_history"]) == 6
        assert run_a["sampler"]["kind"] == "learned" and run_a["sampler"]["steps"] == 6
        assert any(p != run_a["learned_history"][0] for p in run_a["learned_history"])  # it did learn
    if sampling == "student-fit":  # refreshed at the end of warm-up (step 1) and at each evaluation
        refreshed = [x for x in step_lines(a_out) if "probs" in x]
        assert [x["step"] for x in refreshed] == [1, 3, 6]
        assert run_a["sampler"]["kd_losses"] is not None and run_a["sampler"]["probs"] != [1 / 3] * 3


def test_resume_with_dropout_reproduces_an_uninterrupted_run(seq: Team, tmp_path: Path, monkeypatch):
    def cfg_for(out: Path, **kw) -> TrainConfig:
        return seq.cfg(out, **RESUME, **kw)

    run_a, run_b, a_out, b_out = _interrupted_then_resumed(cfg_for, tmp_path, monkeypatch)
    _assert_same_run(run_a, run_b, a_out, b_out)


# ---- 5. sampled teacher frequencies --------------------------------------------------------------------------------
def test_weights_sampling_frequencies_and_run_record(seq: Team, tmp_path: Path):
    """Fixed seed, n = 4000 draws of the step sequence the loader reads: every frequency within 4 binomial sigmas."""
    weights = [0.2, 0.3, 0.5]
    cfg = seq.cfg(tmp_path / "w", sampling="weights=0.2,0.3,0.5", teachers=["a", "b", "c"], max_steps=12)
    trainer = prepare(cfg)
    n = 4000
    counts = Counter(trainer.draws(s).single for s in range(n))
    for i, p in enumerate(weights):
        bound = 4 * math.sqrt(p * (1 - p) / n)  # 0.025 for p = 0.5
        assert abs(counts[i] / n - p) <= bound, (i, counts[i] / n, p, bound)

    run = fit(trainer)
    assert run["sampler"]["kind"] == "weights"
    assert run["sampler"]["probs"] == pytest.approx(weights)
    assert run["sampler"]["meta"]["weights"] == pytest.approx(weights)
    names = ["a", "b", "c"]
    expected = [names[trainer.draws(s).single] for s in range(12)]
    assert [x["teacher"] for x in step_lines(tmp_path / "w")] == expected
    assert run["teacher_histogram"] == dict(Counter(expected))
    assert json.loads((tmp_path / "w" / "run.json").read_text())["teacher_histogram"] == run["teacher_histogram"]


# ---- 6. every target path trains and reduces the loss --------------------------------------------------------------
# pure KD (alpha=1): the data's labels are random, the teachers' outputs are a learnable function of the text
FAST = dict(lr=2e-3, max_steps=16, warmup_ratio=0.0, eval_every=16, alpha=1.0)


def test_pairs_train_and_reduce_the_loss(seq: Team, tmp_path: Path):
    spec = DataSpec(seq.data.source, text_pair_column="text2")
    precompute(spec, [TeacherSpec("a", str(seq.teachers["a"]))], seq.cache, opts())
    before, after, trainer, run = train_on_fixed_batch(config(spec, seq.student, tmp_path / "r", seq.cache, **FAST))
    assert [c.name for c in trainer.caches] == ["a"]  # only the teacher cached for the pair data
    assert trainer.caches[0].manifest.dataset["text_pair_column"] == "text2"
    batch = student_batch(trainer.inputs, np.arange(16))
    assert (batch["token_type_ids"] == 1).any()  # the second segment reaches the student
    assert after["loss"] < 0.5 * before["loss"]
    assert run["final"]["primary"] == "accuracy" and run["teacher_histogram"] == {"a": 16}


def test_regression_trains_and_reduces_the_loss(seq: Team, tmp_path: Path):
    teacher = spread(make_model(tmp_path / "reg", num_labels=1, seed=51), 8.0)
    spec = DataSpec(seq.data.source, label_column="score")
    precompute(spec, [TeacherSpec("reg", str(teacher))], tmp_path / "cache", opts())
    cfg = config(spec, seq.student, tmp_path / "r", tmp_path / "cache", **FAST)
    before, after, trainer, run = train_on_fixed_batch(cfg)
    assert trainer.objective.task == "regression" and trainer.model.config.num_labels == 1
    assert after["loss"] < 0.5 * before["loss"]  # MSE to the teacher's outputs
    assert run["final"]["primary"] == "pearson" and {"spearman", "mse"} <= set(run["final"])


@pytest.mark.parametrize("team", ["mlm", "causal"])
def test_token_level_trains_and_reduces_the_loss(team: str, request, tmp_path: Path):
    t: Team = request.getfixturevalue(team)
    before, after, trainer, run = train_on_fixed_batch(t.cfg(tmp_path / "r", **FAST))
    assert trainer.objective.head == team and trainer.objective.task == "lm"
    assert after["loss"] < 0.97 * before["loss"]  # two teachers that disagree: the floor is far above 0
    assert run["final"]["primary"] == "token_accuracy"
    assert set(run["teacher_histogram"]) == set(t.teachers)


@pytest.mark.parametrize("tokens", ["cls", "all"])
def test_hidden_states_train_and_reduce_the_loss(hidden: Team, tmp_path: Path, tokens: str):
    """beta > 0: a uniform layer map per teacher, a learned projection for the wider teacher, identity otherwise."""
    names = [f"deep_{tokens}", f"shallow_{tokens}"]
    cfg = hidden.cfg(tmp_path / "r", teachers=names, beta=1.0, **FAST)
    before, after, trainer, run = train_on_fixed_batch(cfg)
    assert trainer.objective.hidden_tokens == tokens
    assert trainer.objective.layer_maps == (((1, 2),), ((1, 1),))  # student layer 1 -> each teacher's last layer
    deep, shallow = trainer.projector[0].projections[0], trainer.projector[1].projections[0]
    assert isinstance(deep, torch.nn.Linear) and (deep.in_features, deep.out_features) == (32, 48)
    assert isinstance(shallow, torch.nn.Identity)
    assert after["hidden"] < 0.8 * before["hidden"] and after["loss"] < 0.8 * before["loss"]
    lines = step_lines(tmp_path / "r")
    assert all(x["hidden"] > 0 for x in lines) and {x["teacher"] for x in lines} == set(names)
    state = torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=True)
    assert "0.projections.0.weight" in state["projector"]  # the projection is checkpointed for resume


def test_hidden_targets_unused_at_beta_zero_do_not_constrain_the_tokenizer(hidden: Team, tmp_path: Path):
    from transformers import AutoTokenizer

    other = make_model(tmp_path / "other", layers=1, seed=61)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzzz"])
    tok.save_pretrained(other)
    cfg = config(hidden.data, other, tmp_path / "r", hidden.cache, teachers=["deep_all"], beta=0.0, max_steps=2)
    assert train(cfg)["steps"] == 2


def test_hidden_targets_with_another_tokenizer_are_refused_when_used(hidden: Team, tmp_path: Path):
    from transformers import AutoTokenizer

    other = make_model(tmp_path / "other", layers=1, seed=61)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzzz"])
    tok.save_pretrained(other)
    with pytest.raises(SkdError) as info:
        prepare(config(hidden.data, other, tmp_path / "r", hidden.cache, teachers=["deep_all"], beta=1.0))
    assert "tokenizer" in one_line(info.value)


def test_unlabelled_data_with_sequence_teachers_is_trained_or_refused_cleanly(seq: Team, tmp_path: Path):
    spec = DataSpec(seq.data.source, label_column=None)
    precompute(spec, [TeacherSpec("a", str(seq.teachers["a"]))], tmp_path / "cache", opts())
    try:
        run = train(config(spec, seq.student, tmp_path / "r", tmp_path / "cache", alpha=1.0, max_steps=2))
    except SkdError as exc:
        one_line(exc)
    else:
        assert run["steps"] == 2


def test_grad_accum_uses_one_teacher_per_optimizer_step(seq: Team, tmp_path: Path, monkeypatch):
    """Both micro-batches of a step read the same teacher, and the histogram counts optimizer steps."""
    read: list[int] = []
    original = CachedTargets.targets

    def targets(self, rows, choice):
        read.append(choice.single)
        return original(self, rows, choice)

    monkeypatch.setattr(CachedTargets, "targets", targets)
    run = train(seq.cfg(tmp_path / "r", grad_accum=2, max_steps=4, teachers=["a", "b", "c"]))
    assert run["steps"] == 4 and len(read) == 8
    assert read[0::2] == read[1::2]
    assert run["teacher_histogram"] == dict(Counter("abc"[t] for t in read[0::2]))


# ---- 7. rank samplers ------------------------------------------------------------------------------------------
def test_teacher_rank_uses_the_manifest_metrics(seq: Team, tmp_path: Path):
    run = train(seq.cfg(tmp_path / "tr", sampling="teacher-rank", sampling_temperature=0.05, max_steps=4))
    metrics = np.array([TeacherCache(t["path"]).manifest.metric["value"] for t in run["teachers"]])
    assert [t["metric"]["value"] for t in run["teachers"]] == pytest.approx(metrics.tolist())
    expected = np.exp(metrics / 0.05 - (metrics / 0.05).max())
    assert run["sampler"]["kind"] == "teacher-rank"
    assert run["sampler"]["probs"] == pytest.approx((expected / expected.sum()).tolist(), rel=1e-9)
    assert run["sampler"]["meta"]["metrics"] == pytest.approx(metrics.tolist())
    assert len(set(metrics.tolist())) > 1  # the teachers' metrics differ, so the distribution is not uniform


def _pilot_records(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.glob("*/pilots/*.json")}


def test_student_rank_pilots_run_once_and_are_reused(seq: Team, tmp_path: Path, monkeypatch):
    cache = shutil.copytree(seq.cache, tmp_path / "cache", ignore=shutil.ignore_patterns("pilots"))
    kw = dict(sampling="student-rank", teachers=["a", "b"], pilot_steps=2, max_steps=4, lr=3e-4)
    first = train(config(seq.data, seq.student, tmp_path / "sr1", cache, **kw))
    records = _pilot_records(cache)
    assert len(records) == 2
    pilots = {json.loads(p.read_text())["teacher"]: json.loads(p.read_text()) for p in records}
    assert set(pilots) == {"a", "b"}
    for name, record in pilots.items():
        assert record["steps"] == 2 and record["metric_name"] == "accuracy"
        assert Path(record["run"]) == tmp_path / "sr1" / "pilots" / name
        assert json.loads((Path(record["run"]) / "run.json").read_text())["steps"] == 2
    metrics = np.array([pilots[t["name"]]["metric"] for t in first["teachers"]])
    expected = np.exp(metrics / 0.05 - (metrics / 0.05).max())
    assert first["sampler"]["kind"] == "student-rank"
    assert first["sampler"]["probs"] == pytest.approx((expected / expected.sum()).tolist(), rel=1e-9)

    def no_pilot(cfg):  # pilots train through the function they are handed; the second run must not
        raise AssertionError(f"pilot retrained: {cfg.output}")

    second = fit(prepare(config(seq.data, seq.student, tmp_path / "sr2", cache, **kw), run_pilot=no_pilot))
    assert _pilot_records(cache) == records  # same files, untouched
    assert not (tmp_path / "sr2" / "pilots").exists()
    assert second["sampler"] == first["sampler"]
    assert second["teacher_histogram"] == first["teacher_histogram"]


def test_student_rank_run_is_the_same_whether_pilots_are_trained_or_reused(seq: Team, tmp_path: Path):
    cache = tmp_path / "cache"
    shutil.copytree(seq.cache, cache, ignore=shutil.ignore_patterns("pilots"))
    kw = dict(sampling="student-rank", teachers=["a", "b"], pilot_steps=2, max_steps=4, lr=1e-3)
    train(config(seq.data, seq.student, tmp_path / "fresh", cache, **kw))  # pilots trained here
    train(config(seq.data, seq.student, tmp_path / "reused", cache, **kw))  # and reused here
    a, b = step_lines(tmp_path / "fresh"), step_lines(tmp_path / "reused")
    assert [x["teacher"] for x in a] == [x["teacher"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


# ---- 8. bad input (the plan's and the config's refusals: tests/training/test_plan.py) ---------------------------
def test_token_level_targets_need_the_students_tokenizer(mlm: Team, tmp_path: Path):
    from transformers import AutoTokenizer

    other = make_model(tmp_path / "other", "mlm", layers=1, seed=21)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzzz"])  # same model, another vocabulary
    tok.save_pretrained(other)
    with pytest.raises(SkdError) as info:
        prepare(config(mlm.data, other, tmp_path / "r", mlm.cache))
    assert "tokenizer" in one_line(info.value)


def test_max_length_must_match_token_level_targets(mlm: Team, tmp_path: Path):
    with pytest.raises(SkdError) as info:
        prepare(mlm.cfg(tmp_path / "r", max_length=MAX_LENGTH + 8))
    assert "max-length" in one_line(info.value)


def test_beta_without_cached_hidden_states_is_refused(seq: Team, tmp_path: Path):
    """Refused by the objective (the plan's refusals are in tests/training/test_plan.py)."""
    with pytest.raises(SkdError, match="--hidden-layers") as info:
        prepare(seq.cfg(tmp_path / "r", beta=1.0))
    one_line(info.value)


# ---- 9. the saved student ---------------------------------------------------------------------------------------
def test_saved_student_loads_with_pipeline(skd_run: Path):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(skd_run / "student"), device="cpu")
    out = classify(["good movie", "the food was awful"])
    assert len(out) == 2 and all(o["label"] in LABELS for o in out)


def test_run_record(skd_run: Path, seq: Team):
    run = json.loads((skd_run / "run.json").read_text())
    assert run["config"]["mode"] == "skd" and run["config"]["data"]["source"] == seq.data.source
    assert run["dataset_fingerprint"] == TeacherCache(run["teachers"][0]["path"]).dataset_fingerprint
    assert [t["name"] for t in run["teachers"]] == ["a", "b", "c"]
    assert all(len(t["cache_key"]) == 32 for t in run["teachers"])
    assert run["steps"] == 8 and sum(run["teacher_histogram"].values()) == 8
    assert run["final"]["primary"] == "accuracy" and {"f1_macro", "matthews"} <= set(run["final"])
    assert run["sampler"]["kind"] == "uniform" and run["sampler"]["probs"] == pytest.approx([1 / 3] * 3)
    assert run["best"]["step"] in (4, 8)
    lines = step_lines(skd_run)
    assert {"step", "loss", "kd", "ce", "lr", "teacher"} <= set(lines[0])
    assert [e["step"] for e in eval_lines(skd_run)] == [4, 8]


# ---- 10. CLI -----------------------------------------------------------------------------------------------------
def test_cli_train_none_and_report(seq: Team, data: Path, skd_run: Path, tmp_path: Path):
    from click.testing import CliRunner
    from skdcache.cli.main import cli

    out = tmp_path / "none"
    args = ["-q", "train", "--data", str(data), "--cache", str(seq.cache), "--student", str(seq.student)]
    args += ["--mode", "none", "--output", str(out), "--max-steps", "4", "--batch-size", "16", "--eval-every", "2"]
    args += ["--num-workers", "0", "--device", "cpu", "--max-length", str(MAX_LENGTH)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "final: accuracy=" in result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["mode"] == "none" and run["teachers"] == [] and run["steps"] == 4
    assert all(set(x) >= {"loss", "ce"} and "kd" not in x for x in step_lines(out))

    plots = tmp_path / "plots"
    result = CliRunner().invoke(cli, ["report", str(out), str(skd_run), "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["run", "mode", "sampling"] and set(lines[1]) <= {"-", " "}
    table = [line.split() for line in lines[2:] if not line.startswith("wrote ")]
    assert {cols[0]: cols[1] for cols in table} == {"none": "none", "skd": "skd"}  # run name -> mode
    assert {p.name for p in plots.glob("*.png")} >= {"loss.png", "metric.png", "teachers.png"}
    assert (plots / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_test_metric_is_taken_at_the_checkpoint_validation_selected(seq: Team, tmp_path: Path):
    # the test split is the validation split here, so the selected checkpoint's test metrics must equal its
    # validation metrics, and the last step's test metrics the final validation metrics
    run = train(
        seq.cfg(
            tmp_path / "r", mode="single", teachers=["a"], max_steps=12, eval_every=2, lr=3e-3, test_split="validation"
        )
    )
    evals = eval_lines(tmp_path / "r")
    best = max(evals, key=lambda e: e["eval"]["accuracy"])  # the first of equals, as the loop keeps it
    assert run["best"]["step"] == best["step"] != 12  # the selected checkpoint is reloaded for the test
    assert run["test"]["accuracy"] == pytest.approx(best["eval"]["accuracy"])
    assert run["test"]["f1_macro"] == pytest.approx(best["eval"]["f1_macro"])
    assert run["test_final"]["accuracy"] == pytest.approx(evals[-1]["eval"]["accuracy"])


def test_eval_rows_limits_the_selection_split(seq: Team, tmp_path: Path):
    run = prepare(seq.cfg(tmp_path / "r", mode="single", teachers=["a"], eval_rows=10))
    assert len(run.eval_inputs.enc.ids) == 10 and len(run.plan.eval_rows) == 10
    assert len(prepare(seq.cfg(tmp_path / "s", mode="single", teachers=["a"])).eval_inputs.enc.ids) == 40


def test_selected_checkpoint_of_a_tied_causal_student_is_reloaded_for_the_test(causal: Team, tmp_path: Path):
    run = train(
        causal.cfg(
            tmp_path / "r",
            mode="single",
            teachers=["l1"],
            max_steps=10,
            eval_every=2,
            lr=2e-2,
            test_split="validation",
            temperature=2.0,
        )
    )
    evals = eval_lines(tmp_path / "r")
    best = max(evals, key=lambda e: e["eval"]["token_accuracy"])
    assert run["best"]["step"] == best["step"]
    assert run["test"]["nll"] == pytest.approx(best["eval"]["nll"], rel=1e-5)
    assert run["test_final"]["nll"] == pytest.approx(evals[-1]["eval"]["nll"], rel=1e-5)
