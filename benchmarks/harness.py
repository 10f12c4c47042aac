"""What every benchmark shares, so each script holds only what it measures: where the clone is, the machine and
the command a result was produced by, the `python -m skdcache` command lines benchmarks start, and how a result
is written.

Benchmarks are a package: from the clone's root, `python -m benchmarks.perf.capture` runs one as a module.
`python benchmarks/perf/capture.py` works too (from anywhere): an entry script run as a file has no package, and
puts the clone's root on `sys.path` itself, in the two lines before its `benchmarks` imports:

    if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench-work"  # models, data and caches of benchmark runs (not committed)
DOCS = ROOT / "docs"  # where results are committed


def cpu_model() -> str:
    """The CPU's model name: `platform.processor()` is empty or just the architecture on Linux, so it is read from
    /proc/cpuinfo there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """CPU cores this process may run on (its affinity: a container or taskset may allow fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine() -> str:
    """The machine a result was measured on, in one line; every result JSON records it as `machine`, so results
    taken on different machines compare by the same description."""
    import torch  # here, not at import: the harness also serves scripts that never touch torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        gpu = f"{n} x {torch.cuda.get_device_name(0)}" if n > 1 else torch.cuda.get_device_name(0)
    else:
        gpu = "no GPU"
    return (
        f"{cpu_model()} ({platform.machine()}), {cores()} cores, {gpu}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def shown(path: str | Path) -> str:
    """A path as a result records it: relative to the clone when inside it, so results name no machine's folders."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def command(args: Sequence[str] | None = None) -> str:
    """The command line that started this process, as it is typed at the clone's root: `python -m
    benchmarks.perf.capture ARGS` or `python benchmarks/perf/capture.py ARGS`, with paths inside the clone
    relative to it. `args` stands in for `sys.argv[1:]` when a `main(argv)` is called from code."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    entry = ["-m", spec.name] if spec is not None else [shown(sys.argv[0])]
    line = shlex.join(["python", *entry, *(sys.argv[1:] if args is None else args)])
    return line.replace(str(ROOT) + os.sep, "")


def write_json(path: str | Path, record: dict) -> Path:
    """Write a result as indented JSON with a final newline (parent folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def skdcache_argv(subcommand: str, quiet: bool = True, **options: object) -> list[str]:
    """`python -m skdcache [-q] SUBCOMMAND --option value ...` in this interpreter, for benchmarks that time or
    kill the command line itself (a subprocess each).

    Options keep the order given, `rows_per_block=16` as `--rows-per-block 16`; True is a bare flag, None and
    False leave the option out, a list or tuple repeats it, anything else is passed as `str(value)` (so
    `eval_split=""` is `--eval-split ""`, no evaluation split).
    """
    argv = [sys.executable, "-m", "skdcache", *(["-q"] if quiet else []), subcommand]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            for item in value if isinstance(value, list | tuple) else [value]:
                argv += [flag, str(item)]
    return argv
