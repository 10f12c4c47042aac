"""Benchmarks are code too: every import in every benchmark resolves from the clone's root, benchmarks included as
a package (including the imports inside functions, which a plain import of the module does not run), every entry
point answers `--help` both as a file and with `python -m`, modules stay readable, the harness's command lines
are right, and the quality study's disjoint teacher rows are built on a tiny dataset. Seconds, in one process."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import runpy
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks.harness import ROOT, command, machine, shown, skdcache_argv

SCRIPTS = sorted(p for p in (ROOT / "benchmarks").rglob("*.py") if p.name != "__init__.py")
# entry points without --help: they run their whole campaign when started (kill and fuzz harnesses, a model fetch)
NO_HELP = {"smollm.py", "kill_fuzz.py", "metadata_fuzz.py", "object_store_faults.py", "train_kill.py"}
ENTRY_POINTS = [p for p in SCRIPTS if 'if __name__ == "__main__"' in p.read_text() and p.name not in NO_HELP]
MAX_LINES = 300  # as tests/test_layout.py holds the package to
# Modules allowed over MAX_LINES for now, each with the reason; remove an entry once its module is split.
SIZE_ALLOWED = {
    "benchmarks/perf/topk.py": "sizes, fidelity and the offline layout experiment of one study in one script",
    "benchmarks/reliability/metadata_fuzz.py": "the mutation generators live beside the campaign that judges them",
}


def imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import statement in the file, at any depth; name None for `import module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the script's package
                package = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
                module = f"{package}.{node.module}" if node.module else package
            else:
                module = node.module
            found += [(module, a.name) for a in node.names]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_in_a_benchmark_resolves(path: Path):
    """As `python -m` from the root sees them: a script imports other benchmarks as `benchmarks.<folder>.<name>`,
    never a sibling by its bare file name (which only resolves when that file's folder is on the path)."""
    siblings = {p.stem for p in SCRIPTS}
    missing = []
    for module, name in imports(path):
        if module.split(".")[0] in siblings:
            missing.append(f"{module}: a benchmark imported by file name; import benchmarks.<folder>.{module}")
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if module.split(".")[0] in {"benchmarks", "skdcache"}:
                missing.append(f"{module}: {exc}")
            continue  # an optional third-party package the script itself guards
        if name is not None and name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"from {module} import {name}")
    assert not missing, f"{path.relative_to(ROOT)}: {missing}"


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: p.name)
def test_every_entry_point_answers_help_as_a_file(path: Path, monkeypatch):
    """`python benchmarks/perf/capture.py --help`: the script's folder first on the path, no package."""
    monkeypatch.setattr(sys, "path", [str(path.parent), *sys.path])  # restored afterwards, guard's insert included
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None)
    assert "usage" in out.getvalue().lower()


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: p.name)
def test_every_entry_point_answers_help_as_a_module(path: Path, monkeypatch):
    """`python -m benchmarks.perf.capture --help` from the clone's root."""
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        runpy.run_module(module_name(path), run_name="__main__", alter_sys=True)
    assert done.value.code in (0, None)
    assert "usage" in out.getvalue().lower()


def test_every_benchmark_folder_is_a_package():
    folders = {p.parent for p in SCRIPTS}
    assert not [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()]


def test_benchmark_modules_stay_small():
    too_long = {}
    for path in SCRIPTS:
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in SIZE_ALLOWED:
            too_long[rel] = lines
    assert not too_long, f"benchmark modules over {MAX_LINES} lines (split them by job): {too_long}"
    split = [rel for rel in SIZE_ALLOWED if len((ROOT / rel).read_text().splitlines()) <= MAX_LINES]
    assert not split, f"under {MAX_LINES} lines now: remove from SIZE_ALLOWED {split}"


def test_command_is_the_line_typed_at_the_root(monkeypatch):
    """A result records how to rerun it: paths inside the clone relative, `-m` runs by module, args quoted."""
    main = types.ModuleType("__main__")
    main.__spec__ = None  # run as a file
    monkeypatch.setitem(sys.modules, "__main__", main)
    script, work = ROOT / "benchmarks" / "perf" / "capture.py", ROOT / ".bench-work" / "x"
    monkeypatch.setattr(sys, "argv", [str(script), "--work", str(work), "--cases", "a b"])
    assert command() == "python benchmarks/perf/capture.py --work .bench-work/x --cases 'a b'"
    main.__spec__ = importlib.util.find_spec("benchmarks.perf.capture")  # run with -m
    assert command(["--rows", "10"]) == "python -m benchmarks.perf.capture --rows 10"
    assert shown(work) == ".bench-work/x" and shown("/elsewhere/cache") == "/elsewhere/cache"


def test_skdcache_argv_spells_options_as_the_cli_takes_them():
    argv = skdcache_argv("precompute", data=Path("d"), teacher=["a=x", "b=y"], eval_split="", top_k=8, resume=False)
    assert argv[:5] == [sys.executable, "-m", "skdcache", "-q", "precompute"]
    assert argv[5:] == ["--data", "d", "--teacher", "a=x", "--teacher", "b=y", "--eval-split", "", "--top-k", "8"]
    assert skdcache_argv("train", quiet=False, resume=True)[3:] == ["train", "--resume"]


def test_machine_names_cpu_cores_and_torch():
    import torch

    line = machine()
    assert " cores, " in line and f"torch {torch.__version__}" in line


def test_quality_study_builds_disjoint_teacher_rows(tmp_path: Path):
    """`--teacher-rows disjoint`: the next `train_rows` rows after the students' ones, and the same eval splits."""
    from benchmarks.quality.run import teacher_data
    from skdcache.data.rows import DataSpec, load_rows

    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 10), ("validation", 3), ("test", 3)):
        lines = ["text,label"] + [f"{split} row {i},{'ab'[i % 2]}" for i in range(n)]
        (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    spec = DataSpec(str(data), limit=4)
    out = teacher_data(Namespace(data=str(data)), spec, tmp_path / "work")
    assert load_rows(out).texts == [f"train row {i}" for i in range(4, 8)]
    assert load_rows(spec).texts == [f"train row {i}" for i in range(4)]
    assert len(load_rows(DataSpec(out.source, split="test"))) == 3
