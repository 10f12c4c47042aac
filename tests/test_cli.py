"""The command line as a user meets it: --config files, ls, info, verify, and each command's example."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import make_model, write_split
from skdcache.cli.main import cli, main

from skdcache.data.rows import DataSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig


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


@pytest.mark.parametrize("command", ["precompute", "train", "ls", "info", "verify", "pull", "report", "demo"])
def test_every_help_shows_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and f"skdcache {command}" in result.output


# ---- file:// roots: one reading of --cache everywhere ------------------------------------------------------------
def test_ls_info_verify_on_file_urls(cached):
    cache, _ = cached
    runner = CliRunner()
    ls = runner.invoke(cli, ["ls", "--cache", f"file://{cache}"])
    assert ls.exit_code == 0 and ls.output.count("complete") == 2, ls.output
    verify = runner.invoke(cli, ["verify", "--cache", f"file://{cache}"])
    assert verify.exit_code == 0 and "2 of 2 teacher caches healthy" in verify.output
    group = next(p for p in cache.glob("*/*") if (p / "zarr.json").exists())
    info = runner.invoke(cli, ["info", f"file://{group}"])
    assert info.exit_code == 0 and "state: complete" in info.output, info.output


def test_train_finds_teachers_under_a_file_url(cached, tmp_path):
    cache, _ = cached
    url = f"file://{cache.resolve()}"
    args = ["-q", "train", "--data", str(tmp_path / "data"), "--cache", url, "--student", str(tmp_path / "small")]
    args += ["--output", str(tmp_path / "cli-run"), "--max-steps", "2", "--batch-size", "16", "--num-workers", "0"]
    args += ["--device", "cpu", "--max-length", "32"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "cli-run" / "run.json").read_text())["teachers"]) == 2
    cfg = TrainConfig(
        data=DataSpec(str(tmp_path / "data")),
        student=str(tmp_path / "small"),
        output=str(tmp_path / "api-run"),
        cache=url,
        max_steps=2,
        batch_size=16,
        num_workers=0,
        device="cpu",
        max_length=32,
        progress=False,
    )
    assert len(train(cfg)["teachers"]) == 2


# ---- flags are generated from the library's dataclasses --------------------------------------------------------
NOT_FLAGS = {"data", "teachers", "teacher_path", "progress", "extra"}  # built from other flags, or not a user choice
DATA_FLAGS = {"source": "data", "config_name": "data_config"}  # DataSpec field -> flag parameter


def default_drift(command: click.Command, cls: type, rename: dict[str, str] | None = None) -> list[str]:
    """Flags whose default differs from the default of the dataclass field they fill, and fields with no flag."""
    params = {p.name: p for p in command.params}
    problems = []
    for field in dataclasses.fields(cls):
        name = (rename or {}).get(field.name, field.name)
        if field.name in NOT_FLAGS:
            continue
        if name not in params:
            problems.append(f"{field.name}: no flag")
        elif field.default is dataclasses.MISSING:
            if not params[name].required:
                problems.append(f"{field.name}: required field, optional flag")
        elif params[name].default != field.default:
            problems.append(f"{field.name}: flag default {params[name].default!r} != {field.default!r}")
    return problems


@pytest.mark.parametrize(
    "command, cls, rename",
    [
        (cli.commands["train"], TrainConfig, None),
        (cli.commands["train"], DataSpec, DATA_FLAGS),
        (cli.commands["precompute"], TargetOptions, None),
        (cli.commands["precompute"], DataSpec, DATA_FLAGS),
    ],
)
def test_flag_defaults_are_the_dataclass_defaults(command, cls, rename):
    assert default_drift(command, cls, rename) == []


def test_default_drift_detects_a_copied_default():
    @click.command()
    @click.option("--lr", type=float, default=1e-3)
    def drifted(lr):
        pass

    problems = default_drift(drifted, TrainConfig)
    assert "lr: flag default 0.001 != 0.0001" in problems and "seed: no flag" in problems


# ---- errors: one line, exit 2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/nonexistent/skd"], "error: /nonexistent/skd is not a directory"),
        (["precompute", "--data", "x", "--teacher", "bad"], "error: --teacher 'bad': write NAME=PATH_OR_HUB_ID"),
    ],
)
def test_known_errors_are_one_line_with_status_2(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["skdcache", "-q", *argv])
    monkeypatch.delenv("SKDCACHE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(message), err


# ---- what `ls` prints, `info` takes ------------------------------------------------------------------------------
def test_info_takes_the_key_ls_prints_and_ls_json_has_paths_and_byte_sizes(cached):
    cache, _ = cached
    runner = CliRunner()
    rows = json.loads(runner.invoke(cli, ["ls", "--cache", str(cache), "--json"]).output)
    assert len(rows) == 2 and all(Path(r["path"]).is_dir() and isinstance(r["size"], int) for r in rows), rows
    assert all(len(r["key"]) > 12 and r["metric"]["name"] == "accuracy" for r in rows)
    table = runner.invoke(cli, ["ls", "--cache", str(cache)]).output
    short = rows[0]["key"][:12]
    assert short in table
    info = runner.invoke(cli, ["info", short, "--cache", str(cache)])
    assert info.exit_code == 0 and f"cache_key: {rows[0]['key']}" in info.output, info.output
    dataset = Path(rows[0]["path"]).parent
    wrong_level = runner.invoke(cli, ["info", str(dataset)])
    assert wrong_level.exit_code == 2 and "dataset folder" in wrong_level.stderr and short in wrong_level.stderr


def test_a_train_output_folder_is_a_teacher(tmp_path):
    """`--teacher X=<a train --output folder>`: its model is the student/ subfolder."""
    from skdcache.models import resolve_model_dir

    run = tmp_path / "run"
    make_model(run / "student", "sequence", seed=1)
    assert resolve_model_dir(str(run)) == run / "student"


@pytest.mark.parametrize("command", ["train", "precompute"])
def test_help_groups_flags_and_says_ranges(command):
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for title in ("Data:", "Running:", "Help:"):
        assert title in result.output
    assert "--cache PATH|URL" in result.output and "Other options" not in result.output
    if command == "train":
        assert "Optimisation:" in result.output and "Range: in [0, 1]" in result.output


def test_rerunning_train_reuses_its_finished_run_and_other_settings_need_overwrite(cached, tmp_path):
    """The README's commands run twice: the same train command reuses its finished run; a finished run of other
    settings in --output is refused in one line naming --overwrite, which retrains it."""
    cache, _ = cached
    out = tmp_path / "run"
    args = ["-q", "train", "--data", str(tmp_path / "data"), "--cache", str(cache)]
    args += ["--student", str(tmp_path / "small"), "--output", str(out), "--max-steps", "2", "--batch-size", "16"]
    args += ["--num-workers", "0", "--device", "cpu", "--max-length", "32"]
    runner = CliRunner()
    assert runner.invoke(cli, args).exit_code == 0
    stamp = (out / "run.json").stat().st_mtime_ns
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "final:" in again.output and (out / "run.json").stat().st_mtime_ns == stamp
    other = runner.invoke(cli, [*args, "--alpha", "0.7"])
    assert other.exit_code == 2 and "--overwrite" in other.stderr and "alpha" in other.stderr, other.stderr
    assert (out / "run.json").stat().st_mtime_ns == stamp
    replaced = runner.invoke(cli, [*args, "--alpha", "0.7", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "run.json").read_text())["config"]["alpha"] == 0.7
