"""SkdTrainer resumed from a checkpoint continues exactly where the uninterrupted run is: same rows, teacher
draws and losses from the checkpoint on, within an epoch and across an epoch boundary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_integration_hf import BATCH, cfg_for, team, trainer_for

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10  # 96 rows, batches of 16: 6 steps per epoch, so step 8 lies in the second epoch


class StopAt(transformers.TrainerCallback):
    """Stop after `step`, as a killed job would (the checkpoint of that step is written first)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class RowLog(transformers.TrainerCallback):
    """The rows of every training batch, in order (from the collated batch's skd_row)."""

    def __init__(self, trainer):
        self.rows: list[list[int]] = []
        collate = trainer.data_collator

        def logged(features):
            batch = collate(features)
            if "skd_row" in batch:
                self.rows.append(batch["skd_row"].tolist())
            return batch

        trainer.data_collator = logged


@pytest.fixture(scope="module")
def seq_team(tmp_path_factory):
    from conftest import write_split

    data = tmp_path_factory.mktemp("resume-data")
    write_split(data / "train.csv", 96, seed=1)
    return team(tmp_path_factory.mktemp("resume-seq"), data, "sequence")


def run(seq_team, out: Path, stop: int | None = None, resume: Path | None = None):
    spec, cache, student = seq_team
    cfg = cfg_for(spec, student, cache, out)
    cfg.max_steps = STEPS
    training = {"save_strategy": "steps", "save_steps": stop} if stop else {}
    trainer = trainer_for(cfg, "sequence", out, training=training)
    if stop:
        trainer.add_callback(StopAt(stop))
    rows = RowLog(trainer)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, rows.rows


@pytest.mark.parametrize("stop", [3, 8])
def test_resumed_run_equals_the_uninterrupted_one(seq_team, stop: int, tmp_path: Path):
    full, full_rows = run(seq_team, tmp_path / "full")
    first, _ = run(seq_team, tmp_path / "cut", stop=stop)
    assert [x["step"] for x in first.skd_history] == list(range(1, stop + 1))
    checkpoint = tmp_path / "cut" / f"checkpoint-{stop}"
    assert checkpoint.is_dir()
    resumed, resumed_rows = run(seq_team, tmp_path / "cut", resume=checkpoint)
    expected, got = full.skd_history[stop:], resumed.skd_history
    assert [x["step"] for x in got] == [x["step"] for x in expected] == list(range(stop + 1, STEPS + 1))
    assert [x["teacher"] for x in got] == [x["teacher"] for x in expected]
    assert len({x["teacher"] for x in full.skd_history}) == 2  # the team is really sampled
    assert resumed_rows == full_rows[stop:] and all(len(r) == BATCH for r in resumed_rows)
    for x, y in zip(got, expected, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert full.state.global_step == resumed.state.global_step == STEPS
    # the histogram counts every step of the run, the ones before the resume too
    assert (
        resumed.teacher_histogram
        == full.teacher_histogram
        == first.teacher_histogram + Counter(x["teacher"] for x in got)
    )
    assert sum(full.teacher_histogram.values()) == STEPS
