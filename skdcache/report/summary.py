"""Compare finished training runs for `skdcache report`: summary tables and seed aggregates.

Runs are read by `runs` (only ``run.json`` and ``metrics.jsonl``: no caches, teachers or GPU needed) and
plotted by `plots`; both are re-exported here, so a report needs one import.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from skdcache.report.plots import moving_average, plot_runs
from skdcache.report.runs import MODE_ORDER, NON_SAMPLING_MODES, RunRecord, load_runs, sort_key

__all__ = [
    "MODE_ORDER",
    "NON_SAMPLING_MODES",
    "RunRecord",
    "aggregate_rows",
    "format_params",
    "load_runs",
    "markdown_table",
    "moving_average",
    "plot_runs",
    "summary_rows",
    "text_table",
]


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
    for r in sorted(records, key=sort_key):
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
    for r in sorted(records, key=sort_key):
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
