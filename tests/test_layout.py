"""Package layout rules: no import cycle among skdcache modules, and no module grows past a readable size.

The import graph is built from the source with `ast` (nothing is imported), counting module-level and
function-level imports alike: a deferred import inside a function still ties the two modules together, and
hiding a cycle in a function body is how cycles usually creep back in.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"skdcache": ROOT / "skdcache", "skdcache.cli": ROOT / "cli"}  # cli/ is installed as skdcache.cli
MAX_LINES = 300
# Modules allowed over MAX_LINES for now, each with the reason; remove an entry once its module is split.
SIZE_ALLOWED: set[str] = set()
# Import edges left out of the cycle check, each with the reason; remove an entry once its import is gone.
CYCLE_ALLOWED: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their ``__init__``)."""
    modules = {}
    for prefix, directory in PACKAGE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([prefix, *parts])] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            # `from pkg import x` imports the module pkg.x when there is one, else the name x from pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import skdcache.cache.format.X` style: nearest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    for importer, imported in CYCLE_ALLOWED:
        graph[importer].discard(imported)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_the_imports_it_must() -> None:
    """Guard the parser itself: a graph that missed imports would pass the cycle test vacuously."""
    graph = import_graph()
    assert "skdcache.cli.main" in graph
    assert "skdcache.sampling.base" in graph["skdcache.targets.sources"]  # module level
    assert "skdcache.report.summary" in graph["skdcache.cli.main"]  # inside a command function


def test_find_cycle_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_modules_stay_small() -> None:
    too_long = {}
    for path in module_files().values():
        rel = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in SIZE_ALLOWED:
            too_long[rel] = lines
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


# The pipeline, in order: a stage folder imports only from earlier stages and the foundation modules, never from a
# later stage or a recipe. Recipes (flat entry points), integrations and the CLI sit on top and may import anything.
STAGES = ["data", "cache", "teacher", "sampling", "targets", "distill", "training", "report"]
FOUNDATION = {"errors", "version", "fields", "device", "distributed", "models", "stages"}
TOP = {"", "__main__", "precompute", "train", "demo", "integrations", "cli"}


def _place(module: str) -> str:
    """The stage folder, foundation module or top-level entry a module belongs to (first name after skdcache.)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_place() -> None:
    unplaced = {m for m in module_files() if _place(m) not in {*STAGES, *FOUNDATION, *TOP}}
    assert not unplaced, f"modules outside the stage folders (give each a stage, see STAGES): {sorted(unplaced)}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Edges against the pipeline order: data < cache < ... < report; foundation modules import only each other."""
    rank = {stage: i for i, stage in enumerate(STAGES)}
    upward = []
    for importer, imported in sorted((a, b) for a, deps in graph.items() for b in deps):
        src, dst = _place(importer), _place(imported)
        if src in FOUNDATION:
            ok = dst in FOUNDATION
        elif src in rank:
            ok = dst in FOUNDATION or (dst in rank and rank[dst] <= rank[src])
        else:  # recipes, integrations and the CLI may import anything
            continue
        if not ok:
            upward.append(f"{importer} -> {imported}")
    return upward


def test_no_upward_import_between_stages() -> None:
    upward = upward_imports(import_graph())
    assert not upward, "imports against the pipeline order:\n" + "\n".join(upward)


def test_the_stage_rule_can_fail() -> None:
    """Guard the rule itself: edges up the pipeline, from the foundation, or into a recipe are reported."""
    graph = {
        "skdcache.cache.reader": {"skdcache.training.plan", "skdcache.errors"},
        "skdcache.errors": {"skdcache.data.rows"},
        "skdcache.distill.losses": {"skdcache.train"},
        "skdcache.train": {"skdcache.report.runs"},
    }
    assert upward_imports(graph) == [
        "skdcache.cache.reader -> skdcache.training.plan",
        "skdcache.distill.losses -> skdcache.train",
        "skdcache.errors -> skdcache.data.rows",
    ]


def defined_names(path: Path) -> set[str]:
    """Names a module binds itself at top level (functions, classes, assignments), not the ones it imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def reexported_imports(files: dict[str, Path], sources: list[Path], root: Path = ROOT) -> list[str]:
    """`from skdcache.X import N` where X does not define N itself (and N is no submodule of X): a second path."""
    found = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in files:
                continue
            if node.module == "skdcache":  # the package's public face (its __all__)
                continue
            own = defined_names(files[node.module])
            for alias in node.names:
                if alias.name not in own and f"{node.module}.{alias.name}" not in files:
                    found.append(f"{source.relative_to(root)}: from {node.module} import {alias.name}")
    return found


def test_one_import_path_per_name() -> None:
    """Every import names the module that defines what it imports; only `skdcache` itself re-exports."""
    sources = [p for d in ("skdcache", "cli", "tests", "benchmarks", "examples") for p in (ROOT / d).rglob("*.py")]
    found = reexported_imports(module_files(), sources)
    assert not found, "import these from the module that defines them:\n" + "\n".join(found)


def test_the_import_path_rule_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from skdcache.cache.reader import TeacherCache\nX = 1\n")
    (tmp_path / "b.py").write_text("from skdcache.facade import TeacherCache, X\n")
    files = {"skdcache.facade": tmp_path / "a.py"}
    found = reexported_imports(files, [tmp_path / "b.py"], tmp_path)
    assert found == ["b.py: from skdcache.facade import TeacherCache"]
