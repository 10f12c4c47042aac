"""PNG plots comparing finished runs (`skdcache report --plots`): loss, metric, sampled teachers, learned probs.

Apart from the tables because it is the only part that needs matplotlib, imported when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from skdcache.report.runs import RunRecord, sort_key

DPI = 120


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


def loss_key(records: Sequence[RunRecord]) -> str:
    """What loss.png plots: "ce" (the label cross-entropy every labelled run logs, whatever its objective) when
    every run has it, else each run's own "loss"."""
    has_ce = all(any(isinstance(m.get("ce"), int | float) for m in r.metrics) for r in records)
    return "ce" if has_ce else "loss"


def plot_runs(records: Sequence[RunRecord], out_dir: Path) -> list[Path]:
    """Write loss/metric/teachers/learned PNGs for the runs that have the data; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=sort_key)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)

    # (a) training loss, smoothed over ~2% of the run so sampled-teacher noise does not hide the trend. Runs
    # optimise different objectives (labels only vs alpha*KD + (1-alpha)*CE), so the plot shows a quantity they
    # share: the label cross-entropy part ("ce"), and the total loss only when some run has no labels.
    with_loss = [r for r in records if any(isinstance(m.get("loss"), int | float) for m in r.metrics)]
    key = loss_key(with_loss)
    if with_loss:
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in with_loss:
            points = [(m["step"], float(m[key])) for m in r.metrics if isinstance(m.get(key), int | float)]
            steps, losses = zip(*points, strict=True)
            ax.plot(steps, moving_average(losses, round(0.02 * len(losses))), label=r.name, linewidth=1.2)
        if key == "ce":
            title, ylabel = "Label cross-entropy on training batches (moving average, ~2% of steps)", "label CE"
        else:
            title, ylabel = "Training loss, each run's own objective (moving average, ~2% of steps)", "loss"
        ax.set(title=title, xlabel="step", ylabel=ylabel)
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
