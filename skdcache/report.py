"""Compare finished training runs: summary tables, seed aggregates and PNG plots for `skdcache report`.

Everything here reads only a run directory's ``run.json`` and ``metrics.jsonl``, so a report never needs the
caches, the teachers or a GPU, and works on runs copied off another machine.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skdcache.errors import SkdError

MODE_ORDER = ("none", "single", "average", "skd", "online")
NON_SAMPLING_MODES = ("none", "single", "average")  # modes that never draw a teacher: sampling is meaningless
DPI = 120


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


# ---- loading ------------------------------------------------------------------------------------------------
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


# ---- tables -------------------------------------------------------------------------------------------------
def _sort_key(r: RunRecord) -> tuple:
    mode_rank = MODE_ORDER.index(r.mode) if r.mode in MODE_ORDER else len(MODE_ORDER)
    seed = r.seed if isinstance(r.seed, int) else math.inf
    return (mode_rank, r.mode, r.sampling, seed, r.name)


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def format_params(n: Any) -> str:
    """Parameter counts the way papers quote them: 13.0M, 110.0M, 1.10B, 45.0K."""
    if not isinstance(n, int | float):
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


def summary_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per run with identical keys in display order, sorted by mode, sampling, then seed."""
    rows = []
    for r in sorted(records, key=_sort_key):
        run = r.run
        best = run.get("best") or None
        best_key = (best or {}).get("primary")
        best_value = best.get(best_key) if best and best_key else None
        rows.append(
            {
                "run": r.name,
                "mode": r.mode,
                "sampling": r.sampling,
                "teachers": ",".join(r.teacher_names) or "-",
                "seed": r.seed if r.seed is not None else "-",
                "student params": format_params(run.get("student_parameters")),
                "metric": r.primary or "-",
                "final": _fmt(r.final_value),
                "best": f"{_fmt(best_value)}@{best['step']}" if best_value is not None and "step" in best else "-",
                "steps": run.get("steps", "-"),
                "time (s)": _fmt(run.get("seconds"), 1),
                "steps/s": _fmt(run.get("steps_per_second"), 2),
                "peak RSS MiB": _fmt(run.get("peak_rss_mib"), 0),
            }
        )
    return rows


def aggregate_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Mean ± sample std (ddof=1; 0 for one seed) of the final primary metric per (mode, sampling, teachers).

    The metric name is part of the group too, so runs on different tasks are never averaged together. Runs
    without a final metric (no eval split) count toward nothing; a group with none shows "-" and n = 0.
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for r in sorted(records, key=_sort_key):
        key = (r.mode, r.sampling, ",".join(r.teacher_names) or "-", r.primary or "-")
        groups.setdefault(key, []).append(r)
    rows = []
    for (mode, sampling, teachers, metric), runs in groups.items():
        values = [r.final_value for r in runs if r.final_value is not None]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append(
            {
                "mode": mode,
                "sampling": sampling,
                "teachers": teachers,
                "metric": metric,
                "n": len(values),
                "mean": mean,
                "std": std,
                "mean ± std": f"{mean:.4f} ± {std:.4f}" if mean is not None else "-",
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table (floats to 4 decimals, None as "-") for pasting benchmark results."""
    if not rows:
        return ""
    cols = list(columns or rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain aligned table for the terminal (the CLI's default view); "(nothing)" when there are no rows."""
    if not rows:
        return "(nothing)\n"
    cols = list(columns or rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines) + "\n"


# ---- plots --------------------------------------------------------------------------------------------------
def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean with a shorter window at the start, so the curve keeps one point per step."""
    out, total = [], 0.0
    window = max(1, int(window))
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Write loss/metric/teachers/learned PNGs for the runs that have the data; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=_sort_key)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)

    # (a) training loss, smoothed over ~2% of the run so sampled-teacher noise does not hide the trend
    with_loss = [r for r in records if any(isinstance(m.get("loss"), int | float) for m in r.metrics)]
    if with_loss:
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in with_loss:
            points = [(m["step"], float(m["loss"])) for m in r.metrics if isinstance(m.get("loss"), int | float)]
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, moving_average(losses, round(0.02 * len(losses))), label=r.name, linewidth=1.2)
        ax.set(title="Training loss (moving average, ~2% of steps)", xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, "loss.png")

    # (b) evaluation metric over training
    with_eval = [r for r in records if any(e.get("primary") in e for e in r.evals)]
    if with_eval:
        fig, ax = plt.subplots(figsize=(8, 5))
        names: list[str] = []
        for r in with_eval:
            points = [(e["step"], float(e[e["primary"]])) for e in r.evals if e.get("primary") in e]
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=r.name)
            names = _unique(names + [e["primary"] for e in r.evals if e.get("primary") in e])
        ax.set(title="Evaluation metric", xlabel="step", ylabel=" / ".join(names))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, "metric.png")

    # (c) how often each teacher was sampled: grouped bars, one group per teacher, one bar per run
    with_hist = [r for r in records if r.run.get("teacher_histogram")]
    if with_hist:
        teachers = _unique(t for r in with_hist for t in r.teacher_names + list(r.run["teacher_histogram"]))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(teachers) * max(1, len(with_hist) / 2)), 5))
        width = 0.8 / len(with_hist)
        for i, r in enumerate(with_hist):
            hist = r.run["teacher_histogram"]
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(teachers))]
            ax.bar(xs, [hist.get(t, 0) for t in teachers], width=width, label=r.name)
        ax.set_xticks(range(len(teachers)), teachers, rotation=20 if len(teachers) > 4 else 0)
        ax.set(title="Sampled teachers", xlabel="teacher", ylabel="training steps")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, "teachers.png")

    # (d) learned sampling: the distribution over teachers as training went on, one panel per run
    with_learned = [r for r in records if r.run.get("learned_history")]
    if with_learned:
        fig, axes = plt.subplots(len(with_learned), 1, figsize=(8, 3.5 * len(with_learned)), squeeze=False)
        for ax, r in zip(axes[:, 0], with_learned, strict=True):
            history = r.run["learned_history"]
            n = max(len(p) for p in history)
            names = r.teacher_names if len(r.teacher_names) == n else [f"teacher {i}" for i in range(n)]
            steps = _history_steps(r, len(history))
            for i, name in enumerate(names):
                ax.plot(steps, [p[i] if i < len(p) else math.nan for p in history], label=name)
            ax.set(title=f"Learned teacher distribution: {r.name}", xlabel="step", ylabel="probability")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        save(fig, "learned.png")
    return written


def _unique(items: Iterable[str]) -> list[str]:
    """Distinct items in first-seen order (teacher and metric names keep the order runs list them)."""
    return list(dict.fromkeys(items))


def _history_steps(r: RunRecord, n: int) -> list[int]:
    """Steps of the learned history: those logged with probs when they line up, else 1..n."""
    logged = [m["step"] for m in r.metrics if "probs" in m]
    return logged if len(logged) == n else list(range(1, n + 1))
