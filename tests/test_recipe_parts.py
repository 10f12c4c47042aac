"""The training recipe's parts on their own: teacher draws, pilots' keys and reuse, the step loss."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from skdcache.cache.reader import Targets
from skdcache.data.rows import DataSpec
from skdcache.distill.objective import Objective, step_loss
from skdcache.sampling.categorical import from_weights
from skdcache.sampling.learned import LearnedSampler
from skdcache.targets.sources import TeacherChoice, TeacherDraws
from skdcache.training.config import TrainConfig
from skdcache.training.pilots import pilot_key, pilot_metrics


# ---- teacher draws --------------------------------------------------------------------------------------------
def test_draws_per_mode():
    sampler = from_weights([0.5, 0.5], 2, seed=3)
    assert TeacherDraws("none", None, 2)(5) == TeacherChoice()
    assert TeacherDraws("average", None, 3)(5) == TeacherChoice((0, 1, 2))
    assert TeacherDraws("single", None, 1)(5) == TeacherChoice((0,))
    skd = TeacherDraws("skd", sampler, 2)
    assert [skd(s).single for s in range(50)] == [sampler.sample(s) for s in range(50)]
    assert len({skd(s).single for s in range(50)}) == 2
    assert skd.fixed and not TeacherDraws("skd", LearnedSampler(2, seed=0), 2).fixed


def test_draws_share_the_teacher_across_accumulated_micro_batches():
    draws = TeacherDraws("skd", from_weights([0.5, 0.5], 2, seed=1), 2, grad_accum=3)
    choices = [draws(m).single for m in range(60)]
    assert all(choices[i] == choices[i - i % 3] for i in range(60))
    assert len(set(choices)) == 2


# ---- pilots ---------------------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, student: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data": DataSpec("d"), "student": str(student), "output": str(tmp_path / "out"), **kw})


def _pilot_world(tmp_path: Path):
    rows, eval_rows = SimpleNamespace(fingerprint="rows"), SimpleNamespace(fingerprint="eval")
    caches = [
        SimpleNamespace(name=n, path=tmp_path / "root" / "fp" / n, manifest=SimpleNamespace(cache_key=f"key-{n}"))
        for n in ("a", "b")
    ]
    return rows, eval_rows, caches


@pytest.mark.parametrize(
    "change", [dict(grad_accum=2), dict(grad_clip=0.5), dict(freeze_embeddings=True), dict(lr=1e-3), dict(seed=1)]
)
def test_pilot_key_covers_the_whole_config(tmp_path: Path, change: dict):
    student = make_model(tmp_path / "s")
    rows, eval_rows, (cache, _) = _pilot_world(tmp_path)
    base = pilot_key(_cfg(tmp_path, student), rows, eval_rows, cache, 4)
    assert pilot_key(_cfg(tmp_path, student, **change), rows, eval_rows, cache, 4) != base
    ignored = dict(output=str(tmp_path / "elsewhere"), progress=False, num_workers=3, max_steps=99, mode="online")
    assert pilot_key(_cfg(tmp_path, student, **ignored), rows, eval_rows, cache, 4) == base


def test_pilot_key_changes_when_the_student_is_retrained_in_place(tmp_path: Path):
    student = make_model(tmp_path / "s", seed=1)
    rows, eval_rows, (cache, _) = _pilot_world(tmp_path)
    before = pilot_key(_cfg(tmp_path, student), rows, eval_rows, cache, 4)
    make_model(tmp_path / "s", seed=2)  # same path, new weights
    assert pilot_key(_cfg(tmp_path, student), rows, eval_rows, cache, 4) != before


def test_pilot_metrics_run_once_per_teacher_then_reuse(tmp_path: Path):
    student = make_model(tmp_path / "s")
    rows, eval_rows, caches = _pilot_world(tmp_path)
    calls = []

    def run(cfg: TrainConfig) -> dict:
        calls.append((cfg.mode, tuple(cfg.teachers), cfg.max_steps))
        return {"final": {"primary": "accuracy", "accuracy": 0.5 + 0.1 * len(calls)}}

    cfg = _cfg(tmp_path, student, sampling="student-rank")
    assert pilot_metrics(cfg, rows, eval_rows, caches, 3, run) == pytest.approx([0.6, 0.7])
    assert calls == [("single", ("a",), 3), ("single", ("b",), 3)]
    records = sorted((tmp_path / "root" / "fp" / "pilots").glob("*.json"))
    assert len(records) == 2 and json.loads(records[0].read_text())["steps"] == 3
    assert pilot_metrics(cfg, rows, eval_rows, caches, 3, run) == pytest.approx([0.6, 0.7])
    assert len(calls) == 2  # reused
    pilot_metrics(cfg, rows, eval_rows, caches, 5, run)  # another budget is another pilot
    assert len(calls) == 4


# ---- the step loss --------------------------------------------------------------------------------------------
def test_step_loss_labels_only_mix_and_average():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 2, 1, 1])
    teachers = [Targets(logits=torch.randn(4, 3, generator=gen)) for _ in range(2)]
    obj = Objective("sequence", "classification", temperature=2.0, alpha=0.7)
    outputs, batch = SimpleNamespace(logits=logits), {"labels": labels}
    ce = F.cross_entropy(logits.double(), labels)

    loss, parts = step_loss(obj, outputs, batch, [])
    assert float(loss) == pytest.approx(float(ce)) and set(parts) == {"ce"}

    loss, parts = step_loss(obj, outputs, batch, teachers[:1])
    p = F.softmax(teachers[0].logits.double() / 2, -1)
    kd = (p * (p.log() - F.log_softmax(logits.double() / 2, -1))).sum(-1).mean() * 4
    assert parts["kd"] == pytest.approx(float(kd), rel=1e-5)
    assert float(loss) == pytest.approx(float(0.7 * kd + 0.3 * ce), rel=1e-5)

    _, parts = step_loss(obj, outputs, batch, teachers)
    mix = torch.stack([F.softmax(t.logits.double() / 2, -1) for t in teachers]).mean(0)
    kd_mix = (mix * (mix.log() - F.log_softmax(logits.double() / 2, -1))).sum(-1).mean() * 4
    assert parts["kd"] == pytest.approx(float(kd_mix), rel=1e-5)


# ---- the loader and evaluation ----------------------------------------------------------------------------------
class _RecordingSource:
    """A TargetSource that returns marker targets: which rows and which teachers were asked for."""

    def __init__(self):
        self.calls = []

    def targets(self, rows, choice):
        self.calls.append((rows.tolist(), choice))
        return [Targets(logits=torch.tensor(rows, dtype=torch.float32)) for _ in choice.teachers]


def _inputs(tmp_path: Path, n: int):
    from conftest import write_split

    from skdcache.data.rows import load_rows, tokenize
    from skdcache.models import load_tokenizer
    from skdcache.training.loader import StudentInputs

    write_split(tmp_path / "train.csv", n, seed=0)
    rows = load_rows(DataSpec(str(tmp_path)))
    tok = load_tokenizer(make_model(tmp_path / "m"))
    return StudentInputs(tokenize(tok, rows, 32), rows.labels, "sequence", tok.pad_token_id), rows


def test_loader_reads_each_steps_rows_and_teacher_ahead(tmp_path: Path):
    from skdcache.training.loader import StepBatches, StepSchedule

    inputs, rows = _inputs(tmp_path, 40)
    schedule = StepSchedule(len(rows), 8, seed=2)
    draws = TeacherDraws("skd", from_weights([0.5, 0.5], 2, seed=5), 2)
    source = _RecordingSource()
    batches = StepBatches(inputs, schedule, 3, 9, read_ahead=(draws, source))
    assert len(batches) == 6
    for i in range(len(batches)):
        item = batches[i]
        step = 3 + i
        assert item["step"] == step and item["rows"].tolist() == schedule.rows_for(step).tolist()
        assert source.calls[-1] == (schedule.rows_for(step).tolist(), draws(step))
        assert item["targets"][0].logits.tolist() == schedule.rows_for(step).tolist()
        assert item["labels"].tolist() == rows.labels[schedule.rows_for(step)].tolist()
    # DDP: each rank gets its contiguous slice of the same global batch
    halves = [StepBatches(inputs, schedule, 0, 1, part=(r, 2))[0]["rows"].tolist() for r in range(2)]
    assert halves[0] + halves[1] == schedule.rows_for(0).tolist() and len(halves[0]) == 4
    # without read-ahead the training process reads: the batch carries no targets
    assert "targets" not in StepBatches(inputs, schedule, 0, 1)[0]


def test_evaluate_is_the_accuracy_of_the_argmax(tmp_path: Path):
    from skdcache.training.evaluate import evaluate
    from skdcache.training.loader import student_batch

    inputs, rows = _inputs(tmp_path, 30)
    model = __import__("transformers").AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    obj = Objective("sequence", "classification")
    result = evaluate(model, inputs, obj, torch.device("cpu"), batch_size=7)
    batch = student_batch(inputs, np.arange(len(rows)))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = float((logits.argmax(-1).numpy() == rows.labels).mean())
    assert result["primary"] == "accuracy" and result["accuracy"] == pytest.approx(want)


def test_building_a_student_logs_no_tensor_parallel_noise(tmp_path: Path, capfd):
    """transformers 5 lists every layer as "not sharded" whenever a load runs with its logger quieted."""
    from skdcache.training.student import StudentSpec, build_student

    source = make_model(tmp_path / "student", "sequence", num_labels=3)
    build_student(StudentSpec.parse(str(source), None), "sequence", 2, None, "classification")
    assert "not sharded" not in capfd.readouterr().err
