"""Multi-process precompute (torchrun, gloo on CPU): ranks split whole blocks; the bytes equal one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import make_model, write_split

from skdcache import TeacherCache


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
