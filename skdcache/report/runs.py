"""Finished runs read back from their directories: `RunRecord` and `load_runs`.

Reads only a run directory's ``run.json`` and ``metrics.jsonl``, so the tables (`summary`) and the plots
(`plots`) never need the caches, the teachers or a GPU, and work on runs copied off another machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skdcache.errors import SkdError

MODE_ORDER = ("none", "single", "average", "skd", "online")
NON_SAMPLING_MODES = ("none", "single", "average")  # modes that never draw a teacher: sampling is meaningless


@dataclass
class RunRecord:
    """One finished run: its ``run.json`` plus the training and evaluation lines of its ``metrics.jsonl``."""

    path: Path
    name: str
    run: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)  # training steps: {step, loss, lr, ...}
    evals: list[dict[str, Any]] = field(default_factory=list)  # {step, primary, accuracy, ...}

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    @property
    def mode(self) -> str:
        return str(self.config.get("mode", "?"))

    @property
    def sampling(self) -> str:
        """The sampler, or "-" where the mode never samples a teacher (so the column does not mislead)."""
        if self.mode in NON_SAMPLING_MODES:
            return "-"
        return str(self.config.get("sampling") or "-")

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def teacher_names(self) -> list[str]:
        """Names of the teachers the run actually opened (falls back to the requested ones)."""
        names = [t["name"] for t in self.run.get("teachers") or [] if isinstance(t, dict) and "name" in t]
        return names or list(self.config.get("teachers") or [])

    @property
    def primary(self) -> str | None:
        """Name of the final primary metric, or None when the run had no evaluation split."""
        final = self.run.get("final") or {}
        return final.get("primary")

    @property
    def final_value(self) -> float | None:
        final = self.run.get("final") or {}
        key = final.get("primary")
        value = final.get(key) if key else None
        return float(value) if isinstance(value, int | float) else None


def load_runs(paths: Iterable[Path]) -> list[RunRecord]:
    """Read run directories; a directory without ``run.json`` is an error naming the fix, not a silent skip."""
    records = [_load_run(Path(p)) for p in paths]
    _disambiguate_names(records)
    return records


def _load_run(path: Path) -> RunRecord:
    run_file = path / "run.json"
    if not run_file.is_file():
        raise SkdError(f"{path} is not a finished run: no run.json; train it first or pass --resume")
    try:
        run = json.loads(run_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SkdError(f"{run_file} is unreadable ({exc}); re-run training to rewrite it") from exc
    if not isinstance(run, dict):
        raise SkdError(f"{run_file} is not a run record (expected a JSON object); re-run training to rewrite it")
    metrics, evals = _load_metrics(path / "metrics.jsonl")
    name = path.resolve().name or str(path)
    return RunRecord(path=path, name=name, run=run, metrics=metrics, evals=evals)


def _load_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Split the log into training lines and evaluation lines (each eval keeps its step)."""
    metrics: list[dict] = []
    evals: list[dict] = []
    if not path.is_file():
        return metrics, evals
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SkdError(f"{path}:{lineno} is not valid JSON ({exc.msg}); the log is damaged") from exc
        if not isinstance(obj, dict) or "step" not in obj:
            continue
        if isinstance(obj.get("eval"), dict):
            evals.append({"step": obj["step"], **obj["eval"]})
        else:
            metrics.append(obj)
    return metrics, evals


def _disambiguate_names(records: list[RunRecord]) -> None:
    """Runs from different parents may share a directory name (a/seed0, b/seed0): prefix the parent then."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in records:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"


def sort_key(r: RunRecord) -> tuple:
    """Display order shared by tables and plots: mode (baselines first), sampling, seed, name."""
    mode_rank = MODE_ORDER.index(r.mode) if r.mode in MODE_ORDER else len(MODE_ORDER)
    seed = r.seed if isinstance(r.seed, int) else math.inf
    return (mode_rank, r.mode, r.sampling, seed, r.name)
