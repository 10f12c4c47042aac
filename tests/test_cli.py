"""The command line as a user meets it: --config files, ls, info, verify, and each command's example."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_model, write_split
from skdcache.cli.main import cli


@pytest.fixture
def cached(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    write_split(data / "train.csv", 60, seed=1)
    write_split(data / "validation.csv", 20, seed=2)
    teachers = {name: make_model(tmp_path / name, "sequence", seed=i) for i, name in enumerate(["big", "small"])}
    config = tmp_path / "team.toml"
    config.write_text(
        f'data = "{data}"\ncache = "{tmp_path / "cache"}"\nrows-per-block = 16\nmax_length = 32\n\n'
        "[teachers]\n" + "".join(f'{k} = "{v}"\n' for k, v in teachers.items())
    )
    result = CliRunner().invoke(cli, ["-q", "precompute", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return tmp_path / "cache", result.output


def test_config_file_mirrors_flags(cached):
    cache, output = cached
    assert "big" in output and "small" in output and "computed" in output
    groups = [p for p in cache.glob("*/*") if (p / "zarr.json").exists()]
    assert len(groups) == 2


def test_ls_info_verify(cached):
    cache, _ = cached
    runner = CliRunner()
    ls = runner.invoke(cli, ["ls", "--cache", str(cache)])
    assert ls.exit_code == 0
    lines = [line for line in ls.output.splitlines() if " big " in f" {line} " or " small " in f" {line} "]
    assert len(lines) == 2 and all("complete" in line and "accuracy=" in line for line in lines), ls.output
    group = next(p for p in cache.glob("*/*") if (p / "zarr.json").exists())
    info = runner.invoke(cli, ["info", str(group)])
    assert info.exit_code == 0
    assert "state: complete" in info.output and "logits" in info.output and "B/example" in info.output
    verify = runner.invoke(cli, ["verify", "--cache", str(cache)])
    assert verify.exit_code == 0 and "2 of 2 teacher caches healthy" in verify.output
    shard = group / "logits" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[20] ^= 0xFF
    shard.write_bytes(bytes(raw))
    verify = runner.invoke(cli, ["verify", "--cache", str(cache)])
    assert verify.exit_code == 1 and "FAIL" in verify.output and "block 0 array logits" in verify.output


def test_rerun_says_cached(cached, tmp_path):
    result = CliRunner().invoke(cli, ["-q", "precompute", "--config", str(tmp_path / "team.toml")])
    assert result.exit_code == 0 and sum(" cached " in line for line in result.output.splitlines()) == 2


@pytest.mark.parametrize("command", ["precompute", "train", "ls", "info", "verify", "report", "demo"])
def test_every_help_shows_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and f"skdcache {command}" in result.output
