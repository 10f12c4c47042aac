"""Every bad input a newcomer can type is refused up front: one line on stderr, exit 2, nothing written.

One table of cases, most of it generated: every numeric flag of `train` and `precompute` at 0, negative and
out of range (from the ranges the settings dataclasses declare, so a new flag is covered when it is added),
then missing and misspelled paths, a misspelled config key and a remote root without credentials. Each case
runs in-process through click's CliRunner against a module-wide cache root holding one healthy teacher cache,
and asserts that the root is unchanged (same files, `verify` clean) and that no folder appeared anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import make_model, write_split
from skdcache.cli.main import cli

from skdcache.cache.catalog import verify_root
from skdcache.data.rows import DataSpec
from skdcache.fields import in_range, range_text
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad-input")
    data = base / "data"
    data.mkdir()
    write_split(data / "train.csv", 24, seed=1)
    write_split(data / "validation.csv", 8, seed=2)
    teacher = make_model(base / "teacher", "sequence", layers=1, seed=1)
    root = base / "cache"
    opts = TargetOptions(max_length=16, rows_per_block=8, progress=False)
    precompute(DataSpec(str(data)), [TeacherSpec("t", str(teacher))], root, opts)
    make_model(base / "two-labels", "sequence", num_labels=2, layers=1, seed=2)
    finished = base / "finished-run"
    finished.mkdir()
    (finished / "run.json").write_text("{}")
    (base / "bad.toml").write_text(f'data = "{data}"\nmax_lenght = 64\n')
    return {"base": base, "data": data, "teacher": teacher, "root": root, "finished": finished}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def bad_values(metadata) -> list[float]:
    """0, negative and just out of range: the values of these that the field's range refuses."""
    values = [0, -1, -3]
    if "max" in metadata:
        values.append(metadata["max"] + 1)
    if "below" in metadata:
        values.append(metadata["below"])
    if "above" in metadata:
        values.append(metadata["above"])
    return sorted({v for v in values if not in_range(v, metadata)})


def numeric_cases(command: str, classes: list[type]) -> list[tuple[str, list[str]]]:
    params = {p.name: p for p in cli.commands[command].params}
    cases = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            name = "data" if field.name == "source" else field.name
            if range_text(field.metadata) is None or name not in params:
                continue
            flag = params[name].opts[0]
            for value in bad_values(field.metadata):
                text = str(int(value)) if isinstance(field.default, int) and value == int(value) else str(value)
                cases.append((f"{command} {flag} {text}", [flag, text]))
    cases += [(f"{command} --nproc {v}", ["--nproc", v]) for v in ("0", "-1")]
    return cases


TRAIN_NUMERIC = numeric_cases("train", [TrainConfig, DataSpec])
PRECOMPUTE_NUMERIC = numeric_cases("precompute", [TargetOptions, DataSpec])

# command, extra arguments ({data}, {root}, ... filled from `world`), what the one line must say
OTHER_CASES = [
    ("train", ["--data", "{base}/no-such-data"], "does not exist"),
    ("train", ["--data", "dta"], "did you mean data"),  # a relative typo is not a hub dataset
    ("train", ["--student", "./no-such-student"], "--student ./no-such-student does not exist"),
    ("train", ["--student", "{base}/nope/student"], "does not exist"),
    ("train", ["--config", "{base}/bad.toml"], "max_lenght"),
    ("train", ["--config", "{base}/missing.toml"], "cannot read"),
    ("train", ["--output", "{finished}"], "--overwrite"),
    ("train", ["--mode", "skdd"], "--mode"),
    ("train", ["--alpha", "1.5"], "--alpha 1.5: must be in [0, 1]"),
    ("train", ["--lr", "abc"], "--lr"),
    ("train", ["--cache", "s3://nonexistent-bucket/x"], "credentials"),
    ("train", ["--cache", "{base}/no-such-root"], "no cache root"),
    ("precompute", ["--data", "{base}/no-such-data"], "does not exist"),
    ("precompute", ["--data", "dta"], "did you mean data"),
    ("precompute", ["--teacher", "u=./no-such-teacher"], "does not exist"),
    ("precompute", ["--teacher", "u={base}/no/such/teacher"], "does not exist"),
    ("precompute", ["--teacher", "no-equals-sign"], "NAME=PATH"),
    # a teacher that does not fit the data fails before the (new) cache root is created
    ("precompute", ["--teacher", "u={base}/two-labels", "--cache", "{base}/new-root"], "has 2 labels"),
    ("precompute", ["--top-k", "0", "--cache", "{base}/new-root"], "--top-k 0: must be >= 1"),
    ("precompute", ["--config", "{base}/bad.toml"], "max_lenght"),
    ("precompute", ["--rows-per-block", "3"], "power of two"),
    ("precompute", ["--targets", "topkk"], "--targets"),
    ("precompute", ["--cache", "s3://nonexistent-bucket/x"], "credentials"),
    ("ls", ["--cache", "./no-such-root"], "no cache root"),
    ("ls", ["--cache", "s3://nonexistent-bucket/x"], "credentials"),
    ("verify", ["--cache", "./no-such-root"], "no cache root"),
    ("verify", ["--cache", "s3://nonexistent-bucket/x"], "credentials"),
    ("verify", ["--cache", "memory://nothing-published-here"], "no teacher cache published"),
    ("pull", ["s3://nonexistent-bucket/x", "--cache", "{base}/pulled"], "credentials"),
    ("pull", ["{root}", "--cache", "{base}/pulled"], "local cache root"),
    ("info", ["./no-such-cache"], "not a directory"),
    ("info", ["{dataset}"], "dataset folder"),
    ("info", ["{root}"], "cache root"),
    ("report", ["{base}"], "no run folder"),
    ("train", ["-q", "--epochs", "0"], "--epochs 0"),  # -q after the subcommand is accepted
]


def base_args(command: str, world: dict) -> list[str]:
    if command == "train":
        return ["--data", str(world["data"]), "--cache", str(world["root"]), "--student", str(world["teacher"]),
                "--output", str(world["base"] / "run"), "--max-steps", "1", "--num-workers", "0", "--device", "cpu",
                "--max-length", "16"]  # fmt: skip
    if command == "precompute":
        return ["--data", str(world["data"]), "--cache", str(world["root"]), "--teacher", f"u={world['teacher']}",
                "--max-length", "16", "--rows-per-block", "8", "--device", "cpu"]  # fmt: skip
    return []


def merge(base: list[str], extra: list[str]) -> list[str]:
    """`base` with the flags of `extra` replaced (a flag's value follows it), then the rest of `extra`."""
    given = {a for a in extra if a.startswith("-") and not a.lstrip("-").replace(".", "").isdigit()}
    out, skip = [], False
    for i, arg in enumerate(base):
        if skip:
            skip = False
            continue
        if arg in given:
            skip = i + 1 < len(base) and not base[i + 1].startswith("--")
            continue
        out.append(arg)
    return out + extra


@pytest.fixture
def no_credentials(monkeypatch, world):
    """No AWS credentials anywhere (botocore fails before any request), and roots and mirrors in temp dirs."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world["base"] / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(world["base"] / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SKDCACHE_REMOTE_RETRY_S", "2")
    monkeypatch.setenv("SKDCACHE_MIRROR", str(world["base"] / "mirrors"))
    monkeypatch.setenv("SKDCACHE_HOME", str(world["base"] / "home-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("SKDCACHE_DEBUG", raising=False)


def run_refused(world: dict, command: str, extra: list[str], monkeypatch) -> str:
    """Run one bad command line from inside the data's parent folder; return its one stderr line."""
    monkeypatch.chdir(world["base"])
    before, tree = snapshot(world["root"]), sorted(os.listdir(world["base"]))
    args = [command, *merge(base_args(command, world), extra)]
    result = CliRunner().invoke(cli, ["-q", *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (args, result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
    assert snapshot(world["root"]) == before, args
    assert sorted(os.listdir(world["base"])) == tree, args  # no new folder: no run, no mirror, no cache root
    return lines[0]


@pytest.mark.parametrize(
    "case, extra", TRAIN_NUMERIC + PRECOMPUTE_NUMERIC, ids=lambda x: x if isinstance(x, str) else "-"
)
def test_every_numeric_flag_out_of_range_is_refused(world, case, extra, no_credentials, monkeypatch):
    command = case.split()[0]
    line = run_refused(world, command, extra, monkeypatch)
    assert extra[0] in line, line  # the line names the flag


@pytest.mark.parametrize("command, extra, says", OTHER_CASES, ids=lambda x: x if isinstance(x, str) else "-")
def test_bad_paths_keys_and_roots_are_refused(world, command, extra, says, no_credentials, monkeypatch):
    dataset = next(p for p in world["root"].iterdir() if p.is_dir())
    fill = {k: str(v) for k, v in world.items()} | {"dataset": str(dataset)}
    line = run_refused(world, command, [a.format(**fill) for a in extra], monkeypatch)
    assert says in line, line


def test_the_root_is_still_healthy_after_the_matrix(world):
    report = verify_root(world["root"])
    assert len(report) == 1 and all(problems == [] for problems in report.values()), report


def test_every_numeric_flag_has_a_range():
    """A new numeric flag must declare its range (skdcache.fields.flag), or the matrix would not cover it."""
    missing = []
    for command, classes in (("train", [TrainConfig, DataSpec]), ("precompute", [TargetOptions, DataSpec])):
        fields = {f.name: f for cls in classes for f in dataclasses.fields(cls)} | {"data": None}
        for p in cli.commands[command].params:
            numeric = isinstance(p.type, click.types.IntParamType | click.types.FloatParamType)
            if numeric and p.name != "nproc" and range_text(fields[p.name].metadata) is None:
                missing.append(f"{command} {p.opts[0]}")
    assert missing == []


def test_every_flag_has_a_description():
    missing = [
        f"{name} {p.opts[0]}"
        for name, command in cli.commands.items()
        for p in command.params
        if isinstance(p, click.Option) and not p.help
    ]
    assert missing == []


def test_json_config_key_check_names_the_close_flag(world, no_credentials, monkeypatch):
    line = run_refused(world, "train", ["--config", str(world["base"] / "bad.toml")], monkeypatch)
    assert "did you mean max_length" in line and json.dumps("max_lenght")[1:-1] in line


@pytest.mark.parametrize("kw, says", [({"temperature": -1}, "temperature=-1"), ({"alpha": 1.5}, "alpha=1.5")])
def test_skd_trainer_refuses_out_of_range_settings_before_anything(kw, says):
    pytest.importorskip("transformers")
    from skdcache.errors import SkdError
    from skdcache.integrations.transformers import SkdTrainer

    with pytest.raises(SkdError, match=says):
        SkdTrainer(model=None, cache="/nonexistent", **kw)
