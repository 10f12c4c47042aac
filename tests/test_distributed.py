"""torchrun on CPU (gloo): precompute ranks split whole blocks (bytes equal one process); DDP training ranks
split each global batch (the run equals one process; resume is exact)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model, no_dropout, spread, write_split

from skdcache import TeacherCache
from skdcache.data.rows import DataSpec
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig


def _precompute(data: Path, teacher: Path, cache: Path, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "skdcache",
        "-q",
        "precompute",
        "--data",
        str(data),
        "--teacher",
        f"m={teacher}",
        "--cache",
        str(cache),
        "--rows-per-block",
        "16",
        "--hidden-layers",
        "all",
        "--hidden-tokens",
        "all",
        "--eval-split",
        "",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SKDCACHE_NO_PROGRESS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _files(cache: Path) -> dict[str, bytes]:
    """Every shard and completion marker (zarr.json holds timestamps; the lock file holds a pid)."""
    return {
        str(p.relative_to(cache)): p.read_bytes()
        for p in cache.rglob("*")
        if p.is_file() and p.name != "zarr.json" and not p.name.endswith(".lock") and "dataset" not in p.name
    }


def test_two_processes_write_the_same_bytes_as_one(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 150, seed=3)
    teacher = make_model(tmp_path / "t", "mlm", seed=2)
    _precompute(data, teacher, tmp_path / "one", [])
    _precompute(data, teacher, tmp_path / "two", ["--nproc", "2"])
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) > 20 and one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == []
    (group,) = [p for p in (tmp_path / "two").glob("*/*") if (p / "zarr.json").exists()]
    cache = TeacherCache(group)
    assert cache.manifest.state == "complete" and cache.verify() == []


# ---- DDP training ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict:
    """Two cached sequence teachers and two 1-layer students (with and without dropout)."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    data.mkdir()
    write_split(data / "train.csv", 96, seed=5)
    write_split(data / "validation.csv", 24, seed=6)
    teachers = [TeacherSpec(n, str(spread(make_model(root / n, layers=d, seed=s), 8.0))) for n, d, s in TEAM]
    opts = TargetOptions(max_length=32, batch_size=64, rows_per_block=32, progress=False)
    precompute(DataSpec(str(data)), teachers, root / "cache", opts)
    return {
        "data": data,
        "cache": root / "cache",
        "still": no_dropout(make_model(root / "still", layers=1, seed=7)),
        "student": make_model(root / "student", layers=1, seed=7),
    }


TEAM = [("a", 2, 1), ("b", 1, 2)]


def _config(team: dict, student: str, out: Path, **kw) -> dict:
    return {
        "data": {"source": str(team["data"])},
        "student": str(team[student]),
        "output": str(out),
        "cache": str(team["cache"]),
        "mode": "skd",
        "max_steps": 6,
        "eval_every": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "num_workers": 0,
        "max_length": 32,
        "device": "cpu",
        "progress": False,
        **kw,
    }


def _torchrun(config: dict, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(Path(__file__).with_name("ddp_helper.py")), str(path), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "student" / "model.safetensors")


@pytest.mark.parametrize("sampling", ["uniform", "learned", "student-rank"])
def test_ddp_two_ranks_match_one_process_with_the_same_global_batch(team, tmp_path, sampling):
    """Each rank trains on half of every global batch with the same sampled teacher; averaged gradients make
    the run equal one process (no dropout, so only float summation order differs)."""
    one = train(
        TrainConfig(
            **{**_config(team, "still", tmp_path / "one", sampling=sampling), "data": DataSpec(str(team["data"]))}
        )
    )
    done = _torchrun(_config(team, "still", tmp_path / "two", sampling=sampling), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 6
    assert two["teacher_histogram"] == one["teacher_histogram"]
    assert len(one["teacher_histogram"]) == 2  # both teachers were drawn, so the test sees teacher switches
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert two["final"]["accuracy"] == pytest.approx(one["final"]["accuracy"])
    if sampling == "learned":
        assert np.allclose(two["learned_history"], one["learned_history"], atol=1e-3)


def test_ddp_resume_after_a_crash_reproduces_an_uninterrupted_run(team, tmp_path):
    """With dropout on: each rank's RNG stream is checkpointed with the step, so a resumed run is exact."""
    cfg_a = _config(team, "student", tmp_path / "a")
    assert _torchrun(cfg_a, tmp_path).returncode == 0
    cfg_b = _config(team, "student", tmp_path / "b")
    crashed = _torchrun(cfg_b, tmp_path, "3")
    assert crashed.returncode != 0
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())["step"] == 3
    assert not (tmp_path / "b" / "run.json").exists()
    resumed = _torchrun({**cfg_b, "resume": True}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), rel=1e-6)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ddp_from_the_cli(team, tmp_path):
    """`skdcache train --nproc 2` reruns itself under torchrun; rank 0 alone reports; bad batch sizes fail early."""
    cmd = [sys.executable, "-m", "skdcache", "-q", "train", "--data", str(team["data"]), "--cache", str(team["cache"])]
    cmd += ["--student", str(team["still"]), "--max-steps", "2", "--max-length", "32", "--num-workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    odd, ok = (
        subprocess.run([*cmd, "--output", str(tmp_path / name), "--batch-size", batch, "--nproc", "2"], env=env,
                       capture_output=True, text=True, timeout=600)
        for name, batch in (("odd", "7"), ("ok", "8"))
    )  # fmt: skip
    assert odd.returncode == 2 and odd.stderr.strip().splitlines() == [
        "error: --batch-size 7 is the global batch: use a multiple of --nproc 2"
    ]
    assert not (tmp_path / "odd").exists()
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout.count("teachers sampled") == 1
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("sampling", ["confidence", "smallest-correct"])
def test_ddp_route_matches_one_process(team, tmp_path, sampling):
    """Per-row routing under DDP: each rank draws the teachers of its half of the global batch from (seed, step,
    global row), so two ranks train the run one process trains (same losses and weights)."""
    config = _config(team, "still", tmp_path / "one", mode="route", sampling=sampling)
    one = train(TrainConfig(**{**config, "data": DataSpec(str(team["data"]))}))
    done = _torchrun(_config(team, "still", tmp_path / "two", mode="route", sampling=sampling), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "run.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 6
    assert two["sampler"] == one["sampler"]  # the same routing table, built on every rank
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
