"""SkdTrainer budgets steps as `skdcache train` does, at every gradient accumulation: the same rows, teacher
draws and losses step for step when a pass over the data is not a multiple of the accumulation (96 rows,
batches of 16: 6 batches a pass), with step and epoch budgets, and when resumed in the middle of an epoch."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from test_hf_resume import RowLog, StopAt
from test_integration_hf import BATCH, cfg_for, step_lines, team, trainer_for

from skdcache import SkdError
from skdcache.train import train

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

PASS = 6  # batches per pass over the 96 rows


@pytest.fixture(scope="module")
def seq96(tmp_path_factory):
    from conftest import write_split

    data = tmp_path_factory.mktemp("budget-data")
    write_split(data / "train.csv", 96, seed=1)
    return team(tmp_path_factory.mktemp("budget-seq"), data, "sequence")


def both(seq96, out: Path, ga: int, **budget):
    """`skdcache train` and SkdTrainer on the same settings: (native step lines, Trainer records, Trainer rows)."""
    spec, cache, student = seq96
    cfg = dataclasses.replace(cfg_for(spec, student, cache, out / "native"), grad_accum=ga, **budget)
    train(cfg)
    native = step_lines(out / "native")
    trainer = trainer_for(cfg, "sequence", out / "hf", gradient_accumulation_steps=ga, total_steps=len(native))
    rows = RowLog(trainer)
    trainer.train()
    return native, trainer.skd_history, rows.rows


def native_rows(ga: int, steps: int) -> list[list[int]]:
    """The rows `skdcache train` reads: micro-batch m is batch m % 6 of pass m // 6, one permutation a pass."""
    from skdcache.training.loader import StepSchedule

    schedule = StepSchedule(96, BATCH, 3)
    return [schedule.rows_for(m).tolist() for m in range(ga * steps)]


def same(native: list[dict], hf: list[dict], ga: int) -> None:
    assert len(hf) == ga * len(native)
    assert all(x["step"] == hf[i - i % ga]["step"] for i, x in enumerate(hf))  # whole steps of `ga` batches
    for x, y in zip(hf[ga - 1 :: ga], native, strict=True):  # skdcache logs a step's last micro-batch
        assert (x["step"], x["teacher"]) == (y["step"], y["teacher"])
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)


@pytest.mark.parametrize(("ga", "steps"), [(1, 7), (2, 4), (3, 3), (4, 3)])
def test_step_budget_equals_train_at_every_accumulation(seq96, ga: int, steps: int, tmp_path: Path):
    """Each budget runs past the end of the first pass; at 4 a step takes the last 2 batches of one pass and
    the first 2 of the next (the Trainer used to end its epoch on a 2-batch step)."""
    native, hf, rows = both(seq96, tmp_path, ga, max_steps=steps)
    assert [x["step"] for x in native] == list(range(1, steps + 1))
    assert ga * steps > PASS
    same(native, hf, ga)
    assert rows[: ga * steps] == native_rows(ga, steps)  # the loader may collate one batch ahead


@pytest.mark.parametrize(("ga", "epochs", "steps"), [(4, 2.0, 2), (1, 1.5, 9), (3, 1.0, 2)])
def test_epoch_budget_equals_train(seq96, ga: int, epochs: float, steps: int, tmp_path: Path):
    """An epoch is max(1, floor(6 / ga)) steps on both sides: epochs=2 at ga=4 is 2 steps (the Trainer took 4)."""
    native, hf, rows = both(seq96, tmp_path, ga, max_steps=None, epochs=epochs)
    assert len(native) == steps == math.ceil(epochs * max(1, PASS // ga))
    same(native, hf, ga)
    assert rows[: ga * steps] == native_rows(ga, steps)  # the loader may collate one batch ahead


@pytest.mark.parametrize("ga", [2, 3])
def test_resume_in_the_middle_of_an_epoch_continues_the_same_rows_and_draws(seq96, ga: int, tmp_path: Path):
    """Stopped after step 4 (ga 2: step 1 of the second epoch's 3; ga 3: step 2 of its 2), resumed from the
    checkpoint: the rest equals the uninterrupted run, which equals `skdcache train`."""
    spec, cache, student = seq96
    steps, stop = 6, 4 if ga == 2 else 3
    native, full, full_rows = both(seq96, tmp_path / "full", ga, max_steps=steps)
    same(native, full, ga)
    cfg = dataclasses.replace(cfg_for(spec, student, cache, tmp_path / "cut"), grad_accum=ga, max_steps=steps)
    training = {"save_strategy": "steps", "save_steps": stop}
    first = trainer_for(cfg, "sequence", tmp_path / "cut", gradient_accumulation_steps=ga, training=training)
    first.add_callback(StopAt(stop))
    first.train()
    resumed = trainer_for(cfg, "sequence", tmp_path / "cut", gradient_accumulation_steps=ga, training=training)
    rows = RowLog(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / f"checkpoint-{stop}"))
    got, expected = resumed.skd_history, full[ga * stop :]
    assert [x["step"] for x in got] == [x["step"] for x in expected] == sorted(x["step"] for x in got)
    assert got[0]["step"] == stop + 1 and got[-1]["step"] == steps
    assert [x["teacher"] for x in got] == [x["teacher"] for x in expected]
    assert len({x["teacher"] for x in full}) == 2  # the team is really sampled
    assert rows.rows[: len(got)] == full_rows[ga * stop : ga * steps]
    for x, y in zip(got, expected, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


def test_label_smoothing_is_refused_in_one_line(seq96, tmp_path: Path):
    spec, cache, student = seq96
    cfg = cfg_for(spec, student, cache, tmp_path)
    with pytest.raises(SkdError) as err:
        trainer_for(cfg, "sequence", tmp_path / "hf", training={"label_smoothing_factor": 0.1})
    assert "\n" not in str(err.value) and "label_smoothing_factor=0" in str(err.value)
