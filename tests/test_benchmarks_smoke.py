"""Benchmarks are code too: every import in every benchmark script resolves (including the ones inside functions,
which a plain import of the module does not run), every entry point answers `--help`, and the quality study's
disjoint teacher rows are built on a tiny dataset. Seconds, in one process."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import runpy
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").rglob("*.py") if p.name != "__init__.py")
# entry points without --help: they run their whole campaign when started (kill and fuzz harnesses, a model fetch)
NO_HELP = {"smollm.py", "kill_fuzz.py", "metadata_fuzz.py", "object_store_faults.py", "train_kill.py"}


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


@pytest.fixture(autouse=True)
def root_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_in_a_benchmark_resolves(path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: its folder's modules import
    ours = {"benchmarks", "skdcache", *(p.stem for p in path.parent.glob("*.py"))}
    missing = []
    for module, name in imports(path):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if module.split(".")[0] in ours:
                missing.append(f"{module}: {exc}")
            continue  # an optional third-party package the script itself guards
        if name is not None and name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"from {module} import {name}")
    assert not missing, f"{path.relative_to(ROOT)}: {missing}"


@pytest.mark.parametrize(
    "path",
    [p for p in SCRIPTS if 'if __name__ == "__main__"' in p.read_text() and p.name not in NO_HELP],
    ids=lambda p: p.name,
)
def test_every_entry_point_answers_help(path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None)
    assert "usage" in out.getvalue().lower()


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
