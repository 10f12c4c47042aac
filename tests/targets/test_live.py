"""Live teachers (`--mode online`) find their models from any directory, and say how to point at a moved one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import make_model, write_split

from skdcache import DataSpec, SkdError, TargetOptions, TeacherSpec, precompute
from skdcache.train import train
from skdcache.training.config import TrainConfig


@pytest.fixture
def relative_team(tmp_path: Path, monkeypatch):
    """A teacher precomputed by a relative path from one directory; training then runs from another."""
    (tmp_path / "project").mkdir()
    (tmp_path / "data").mkdir()
    write_split(tmp_path / "data" / "train.csv", 40, seed=1)
    make_model(tmp_path / "project" / "teacher", layers=1, seed=1)
    student = make_model(tmp_path / "student", layers=1, seed=2)
    monkeypatch.chdir(tmp_path / "project")
    opts = TargetOptions(max_length=32, batch_size=16, rows_per_block=64, eval_split=None, progress=False)
    precompute(DataSpec(str(tmp_path / "data")), [TeacherSpec("t", "teacher")], tmp_path / "cache", opts)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path, student


def _cfg(root: Path, student: Path, out: str, **kw) -> TrainConfig:
    base = dict(data=DataSpec(str(root / "data")), student=str(student), output=str(root / out), mode="online")
    base.update(cache=str(root / "cache"), max_steps=2, batch_size=8, num_workers=0, progress=False, device="cpu")
    base.update(max_length=32, eval_split=None)
    return TrainConfig(**{**base, **kw})


def test_online_finds_a_relative_teacher_from_another_directory(relative_team):
    root, student = relative_team
    assert Path(os.getcwd()).name == "elsewhere" and not Path("teacher").exists()
    assert train(_cfg(root, student, "run"))["steps"] == 2


def test_a_moved_teacher_is_a_one_line_error_naming_the_flag_and_the_flag_works(relative_team):
    root, student = relative_team
    shutil.move(root / "project" / "teacher", root / "moved")
    with pytest.raises(SkdError, match="--teacher-path t=PATH") as info:
        train(_cfg(root, student, "run"))
    assert "\n" not in str(info.value)
    assert train(_cfg(root, student, "run2", teacher_path=[f"t={root / 'moved'}"]))["steps"] == 2
