"""Cache roots on shared storage, against real servers on loopback: moto's S3 server (read/write) and Python's
http.server (read-only), plus fsspec's in-process memory:// store."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import make_model, no_dropout, spread, write_split

from skdcache.cache.remote import RemoteRoot
from skdcache.data.rows import DataSpec
from skdcache.errors import CacheError
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig

OPTS = TargetOptions(max_length=32, batch_size=64, rows_per_block=32, progress=False)


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("remote")
    data = root / "data"
    data.mkdir()
    write_split(data / "train.csv", 80, seed=8)
    write_split(data / "validation.csv", 20, seed=9)
    teachers = [
        TeacherSpec("a", str(spread(make_model(root / "a", layers=2, seed=1), 8.0))),
        TeacherSpec("b", str(spread(make_model(root / "b", layers=1, seed=2), 8.0))),
    ]
    local = root / "local"
    precompute(DataSpec(str(data)), teachers, local, OPTS)
    return {"data": data, "teachers": teachers, "local": local, "student": no_dropout(make_model(root / "s", seed=3))}


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SKDCACHE_MIRROR", str(tmp_path / "mirrors"))
    return tmp_path / "mirrors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3").mkdir("team-bucket")
    yield env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    server.stop()


@pytest.fixture(scope="module")
def http_root(team):
    """Serve a copy of the local cache root read-only over HTTP (directory listings, as nginx autoindex)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(team["local"]))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _train(team: dict, cache: str, out: Path) -> dict:
    cfg = TrainConfig(
        data=DataSpec(str(team["data"])),
        student=str(team["student"]),
        output=str(out),
        cache=cache,
        max_steps=4,
        batch_size=8,
        num_workers=0,
        max_length=32,
        device="cpu",
        progress=False,
    )
    return train(cfg)


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_s3_precompute_publishes_and_train_reads_the_same_targets(team, s3_server, mirror, tmp_path):
    url = "s3://team-bucket/skd"
    results = precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    assert [r.status for r in results] == ["computed", "computed"]
    again = precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    assert [r.status for r in again] == ["cached (remote)", "cached (remote)"]

    shutil.rmtree(mirror)  # another machine: nothing local, the teachers are found remotely and not recomputed
    third = precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    assert [r.status for r in third] == ["cached (remote)", "cached (remote)"]
    assert not mirror.exists() or not any(mirror.rglob("*.json"))  # nothing was downloaded for that

    remote = _train(team, url, tmp_path / "remote")
    local = _train(team, str(team["local"]), tmp_path / "local")
    assert remote["teacher_histogram"] == local["teacher_histogram"]
    assert _losses(tmp_path / "remote") == _losses(tmp_path / "local")  # same targets, bit for bit
    assert all(str(mirror) in t["path"] for t in remote["teachers"])


def test_s3_publish_that_dies_before_the_manifest_is_invisible_and_redone(team, s3_server, mirror, monkeypatch):
    url = "s3://team-bucket/crash"
    original = RemoteRoot.publish

    def dies_before_manifest(self, group):
        real_pipe = self.fs.pipe_file

        def pipe_file(path, data, **kw):
            if path.endswith(f"{group.name}/zarr.json"):
                raise ConnectionError("network gone")
            return real_pipe(path, data, **kw)

        monkeypatch.setattr(self.fs, "pipe_file", pipe_file)
        try:
            original(self, group)
        finally:
            monkeypatch.setattr(self.fs, "pipe_file", real_pipe)

    monkeypatch.setattr(RemoteRoot, "publish", dies_before_manifest)
    monkeypatch.setenv("SKDCACHE_REMOTE_RETRY_S", "1")  # the network stays gone: retried for 1 s, then one line
    with pytest.raises(CacheError, match=r"s3://team-bucket/crash: uploading .*zarr\.json failed"):
        precompute(DataSpec(str(team["data"])), team["teachers"][:1], url, OPTS)
    remote = RemoteRoot(url)
    assert remote.manifests() == []  # the shards are there, but no reader can see a group without zarr.json
    assert remote.fs.find(remote.base)  # (they are)
    monkeypatch.setattr(RemoteRoot, "publish", original)
    (result,) = precompute(DataSpec(str(team["data"])), team["teachers"][:1], url, OPTS)
    assert result.status == "cached"  # computed locally before; now only published
    assert [m.teacher["name"] for _, _, m in RemoteRoot(url).manifests()] == ["a"]


def test_http_root_is_read_only_and_trains_like_local(team, http_root, mirror, tmp_path):
    out = _train(team, http_root, tmp_path / "http")
    ref = _train(team, str(team["local"]), tmp_path / "local")
    assert _losses(tmp_path / "http") == _losses(tmp_path / "local")
    assert out["teacher_histogram"] == ref["teacher_histogram"]
    with pytest.raises(Exception, match="read-only"):
        precompute(DataSpec(str(team["data"])), team["teachers"], http_root, OPTS)


def test_mirror_is_reused_and_verified(team, http_root, mirror, tmp_path):
    remote = RemoteRoot(http_root)
    (fp, _, m), *_ = remote.manifests()
    first = remote.fetch(fp, m.cache_key)
    stamp = (first / "zarr.json").stat().st_mtime_ns
    assert remote.fetch(fp, m.cache_key) == first and (first / "zarr.json").stat().st_mtime_ns == stamp
    from skdcache.cache.reader import TeacherCache

    assert TeacherCache(first).verify() == []


def test_cli_ls_and_verify_on_urls(team, http_root, mirror):
    env = {**os.environ, "SKDCACHE_MIRROR": str(mirror)}
    ls, verify = (
        subprocess.run([sys.executable, "-m", "skdcache", command, "--cache", http_root], env=env,
                       capture_output=True, text=True, timeout=300)
        for command in ("ls", "verify")
    )  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.count("complete") == 2
    assert verify.returncode == 0, verify.stderr
    assert "2 of 2 teacher caches healthy" in verify.stdout


def test_memory_root_round_trip(team, mirror, tmp_path):
    url = "memory://skd-test-root"
    results = precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    assert {r.status for r in results} == {"computed"}
    shutil.rmtree(mirror)
    out = _train(team, url, tmp_path / "mem")
    assert out["steps"] == 4 and len(out["teachers"]) == 2


def test_pull_mirrors_a_remote_root_into_a_local_one(team, mirror, tmp_path):
    """`skdcache pull URL --cache LOCAL`: every published group mirrored whole and verified; a second pull
    reuses them; a root with nothing published is refused in one line and leaves no folder."""
    from click.testing import CliRunner
    from skdcache.cli.main import cli

    from skdcache.cache.catalog import verify_root

    url = "memory://skd-pull-root"
    precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    local = tmp_path / "pulled"
    first = CliRunner().invoke(cli, ["-q", "pull", url, "--cache", str(local)])
    assert first.exit_code == 0, first.output
    report = verify_root(local)
    assert len(report) == 2 and all(problems == [] for problems in report.values()), report
    stamps = {p: p.stat().st_mtime_ns for p in local.rglob("*") if p.is_file() and p.suffix != ".lock"}
    again = CliRunner().invoke(cli, ["-q", "pull", url, "--cache", str(local), "--teacher", "a"])
    assert again.exit_code == 0 and " a " in again.output and " b " not in again.output, again.output
    assert {p: p.stat().st_mtime_ns for p in local.rglob("*") if p.is_file() and p.suffix != ".lock"} == stamps
    empty = CliRunner().invoke(cli, ["pull", "memory://nothing-published", "--cache", str(tmp_path / "none")])
    assert empty.exit_code == 2 and len(empty.stderr.strip().splitlines()) == 1, empty.stderr
    assert not (tmp_path / "none").exists()


def test_skd_trainer_reads_a_remote_root(team, mirror, tmp_path):
    """SkdTrainer(cache=URL) mirrors the team it needs, as `skdcache train --cache URL` does."""
    pytest.importorskip("transformers")
    from test_integration_hf import cfg_for, trainer_for

    url = "memory://skd-trainer-root"
    precompute(DataSpec(str(team["data"])), team["teachers"], url, OPTS)
    shutil.rmtree(mirror, ignore_errors=True)
    cfg = cfg_for(DataSpec(str(team["data"])), team["student"], url, tmp_path / "hf")
    cfg.max_steps = 2
    trainer = trainer_for(cfg, "sequence", tmp_path / "hf")
    trainer.train()
    assert sum(trainer.teacher_histogram.values()) == 2
    assert sorted(trainer.teacher_names) == ["a", "b"]
