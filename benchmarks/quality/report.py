"""Tables of the quality study: docs/results/<dataset>.{json,md} and the index docs/results.md.

The index is regenerated from every docs/results/*.json; text below its `<!-- reading -->` marker is written
by people who read the tables and is kept as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.harness import machine
from benchmarks.quality.stats import paired
from skdcache.report.runs import load_runs

MARKER = "<!-- reading -->"
COMPARE = ("largest single", "best single", "average", "none")


def _load(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        f = p / "run.json"
        if f.exists():
            (rec,) = load_runs([p])
            r = rec.run
            out.append(
                {
                    "budget": p.parent.name,
                    "name": p.name.rsplit("-s", 1)[0],
                    "seed": r["config"]["seed"],
                    "evals": rec.evals,
                    **r,
                }
            )
    return out


def learning_curve(runs: list[dict], primary: str) -> dict:
    """Validation metric at every evaluation step of one budget's runs, and each config minus `none` there.

    The short-budget question (does KD fall below labels only when training stops early?) read off the long runs:
    the same student at a quarter, half, ... of its budget. Unlike a genuinely short run, its learning rate has
    not decayed yet at those steps.
    """
    cells: dict[str, dict[int, dict[int, float]]] = {}
    for r in runs:
        for e in r["evals"]:
            if primary in e:
                cells.setdefault(r["name"], {}).setdefault(e["step"], {})[r["seed"]] = e[primary] * 100
    steps = sorted({s for c in cells.values() for s in c})
    rows = {}
    for c, by_step in cells.items():
        rows[c] = {
            "mean": [float(np.mean(list(by_step[s].values()))) if s in by_step else None for s in steps],
            "vs_none": [
                paired(by_step[s], cells["none"][s])
                if c != "none" and "none" in cells and s in by_step and s in cells["none"]
                else None
                for s in steps
            ],
        }
    return {"steps": steps, "rows": rows}


def summarise(name: str, args, budget: dict, steps: dict, teachers: list, runs: list[dict]) -> dict:
    """Per budget and config: test metric per seed (at the validation-selected checkpoint) and comparisons."""
    teacher_runs = {t.name: json.loads((Path(t.source).parent / "run.json").read_text()) for t in teachers}
    primary = next(iter(teacher_runs.values()))["final"]["primary"]
    team = {
        n: {
            "params": r["student_parameters"],
            "train_rows": r["config"]["data"]["limit"],
            "epochs": r["config"]["epochs"],
            "validation": (r["best"] or r["final"])[primary],
            "test": r["test"][primary],
            "test_at": "selected" if "test_final" in r else "last step",
        }
        for n, r in teacher_runs.items()
    }
    largest = max(team, key=lambda n: team[n]["params"])
    by_budget: dict[str, dict] = {}
    runs_of: dict[str, list[dict]] = {}
    for r in runs:
        runs_of.setdefault(r["budget"], []).append(r)
        cell = by_budget.setdefault(r["budget"], {}).setdefault(r["name"], {"test": {}, "val": {}, "sec": []})
        seed = r["seed"]
        cell["test"][seed] = r["test"][primary] * 100
        cell["val"][seed] = (r["best"] or r["final"])[primary] * 100
        cell["sec"].append(r["seconds"])
    budgets = {}
    for b, cells in by_budget.items():
        singles = [c for c in cells if c.startswith("single-")]
        best = max(singles, key=lambda c: np.mean(list(cells[c]["val"].values()))) if singles else None
        base = {"largest single": f"single-{largest}", "best single": best, "average": "average", "none": "none"}
        rows = {}
        for c, cell in cells.items():
            v = np.array(list(cell["test"].values()))
            rows[c] = {
                "seeds": {str(s): x for s, x in sorted(cell["test"].items())},
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                "val_mean": float(np.mean(list(cell["val"].values()))),
                "seconds": float(np.mean(cell["sec"])),
                "vs": {
                    k: paired(cell["test"], cells[bl]["test"]) if bl in cells and bl != c else None
                    for k, bl in base.items()
                },
            }
        budgets[b] = {
            "steps": steps[b],
            "baselines": base,
            "rows": rows,
            "curve": learning_curve(runs_of[b], primary),
        }
    return {
        "dataset": name,
        "data": args.data,
        "columns": {"text": args.text_column, "pair": args.text_pair_column, "label": args.label_column},
        "metric": primary,
        "budget": budget,
        "teachers": team,
        "largest": largest,
        "budgets": budgets,
        "teacher_rows": args.teacher_rows,
        "machine": machine(),
    }


def _cmp(c: dict | None) -> str:
    if c is None:
        return "-"
    need = (
        ""
        if c["verdict"] != "tie"
        else f", needs ~{c['seeds_needed']:.0f} seeds"
        if np.isfinite(c["seeds_needed"])
        else ""
    )
    return f"{c['mean']:+.2f} [{c['lo']:+.2f}, {c['hi']:+.2f}] **{c['verdict']}**{need}"


def render(s: dict, command: str) -> str:
    m = s["metric"]
    lines = [
        f"# {s['dataset']}: {m} on the test split (x100)",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Machine: {s['machine']}. Budget: `{json.dumps(s['budget'])}`.",
        "",
        "Teachers were fine-tuned on "
        + (
            "the same rows the students distil on"
            if s.get("teacher_rows", "same") == "same"
            else "the next `train_rows` train rows, disjoint from the students' (`--teacher-rows disjoint`)"
        )
        + "; students distil on the first `train_rows` train rows; validation selects checkpoints, test is reported.",
        "",
        "| teacher | params | fine-tuned on (rows, epochs) | validation | test |",
        "|---|---:|---|---:|---:|",
    ]
    for n, t in s["teachers"].items():
        lines.append(
            f"| {n} | {t['params'] / 1e6:.1f}M | {t['train_rows']}, {t['epochs']} | {t['validation'] * 100:.2f} | "
            f"{t['test'] * 100:.2f} ({t['test_at']}) |"
        )
    n_teach, rows, batch = len(s["teachers"]), s["budget"]["train_rows"], s["budget"]["batch_size"]
    lines += [
        "",
        f"**Cost.** Precompute ran each of the {n_teach} teachers once over the {rows} rows ({n_teach * rows} "
        "teacher forwards, shared by every run below); a run from the cache then runs no teacher at all. Finding "
        f"the best single teacher costs {n_teach} student runs; the largest single teacher, averaging and SKD cost "
        f"one each. The same runs with live teachers would cost steps x {batch} teacher forwards per run "
        f"(x {n_teach} for averaging).",
    ]
    for b, bud in s["budgets"].items():
        base = bud["baselines"]
        lines += [
            "",
            f"## Budget `{b}`: {bud['steps']} steps",
            "",
            f"Baselines: largest single = `{base['largest single']}`, best single (by validation, needs "
            f"{sum(c.startswith('single-') for c in bud['rows'])} runs to find) = `{base['best single']}`.",
            "Comparisons: mean paired difference over seeds [95% bootstrap interval]; a tie names the seeds "
            "a difference of this size would need (80% power).",
            "",
            "| student | test mean ± sd | per seed | vs largest single | vs best single | vs average | vs none "
            "| s/run |",
            "|---|---:|---|---|---|---|---|---:|",
        ]
        for c, r in sorted(bud["rows"].items(), key=lambda kv: -kv[1]["mean"]):
            per = " / ".join(f"{x:.1f}" for x in r["seeds"].values())
            vs = " | ".join(_cmp(r["vs"][k]) for k in COMPARE)
            lines.append(f"| {c} | {r['mean']:.2f} ± {r['std']:.2f} | {per} | {vs} | {r['seconds']:.0f} |")
        lines += _render_curve(bud.get("curve"), m)
    return "\n".join(lines) + "\n"


def _render_curve(curve: dict | None, metric: str) -> list[str]:
    """Validation along training: mean over seeds, and the paired difference to `none` at each evaluation."""
    if not curve or len(curve["steps"]) < 2 or "none" not in curve["rows"]:
        return []
    steps = curve["steps"]
    lines = [
        "",
        f"**Along training** (validation {metric} x100 at each evaluation, mean over seeds; in brackets the paired "
        "difference to `none` with its 95% interval): what stopping early would give. The learning rate at "
        "these steps has not decayed yet, unlike a run whose whole budget is that short.",
        "",
        "| student | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    order = sorted(curve["rows"].items(), key=lambda kv: -(kv[1]["mean"][-1] or 0))
    for c, r in order:
        cells = []
        for mean, d in zip(r["mean"], r["vs_none"], strict=True):
            cell = "-" if mean is None else f"{mean:.1f}"
            if d is not None:
                cell += f" ({d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}])"
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def plot(s: dict, path: Path) -> None:
    """Forest plot: every student's paired difference to the best single teacher, per budget, with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(s["budgets"].items())
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 0.45 * len(budgets[0][1]["rows"]) + 1.5))
    for ax, (b, bud) in zip(np.atleast_1d(axes), budgets, strict=True):
        rows = [(c, r["vs"]["best single"]) for c, r in bud["rows"].items() if r["vs"]["best single"]]
        rows.sort(key=lambda x: x[1]["mean"])
        for y, (_, d) in enumerate(rows):
            color = {"win": "tab:green", "loss": "tab:red"}.get(d["verdict"], "tab:gray")
            ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]], fmt="o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [c for c, _ in rows])
        ax.set_title(f"{b} ({bud['steps']} steps): vs {bud['baselines']['best single']}", fontsize=9)
        ax.set_xlabel(f"paired difference in test {s['metric']} x100 (95% bootstrap)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(name: str, args, budget: dict, steps: dict, teachers: list, paths: list[Path], out: Path) -> None:
    runs = _load(paths)
    if not runs:
        return
    s = summarise(name, args, budget, steps, teachers, runs)
    defaults = {
        "text_column": "text",
        "text_pair_column": None,
        "label_column": "label",
        "team": None,
        "mpnet": None,
        "teacher_rows": "same",
    }
    flags = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in defaults if getattr(args, k) != defaults[k])
    flags += "".join(f" --set {x}" for x in getattr(args, "set", []))  # budget overrides: part of the recipe
    command = f"python benchmarks/quality/run.py --data {args.data} {flags}".rstrip()
    s["command"] = command
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "results" / f"{name}.json").write_text(json.dumps(s, indent=1))
    plot(s, out / "results" / f"{name}.png")
    (out / "results" / f"{name}.md").write_text(render(s, command) + f"\n![paired differences]({name}.png)\n")
    write_index(out)


def write_index(out: Path) -> None:
    """docs/results.md: one line per dataset, budget and SKD sampling; the hand-written reading is kept."""
    index = out / "results.md"
    reading = index.read_text().split(MARKER, 1)[1] if index.exists() and MARKER in index.read_text() else "\n"
    lines = [
        "# Distillation quality (measured)",
        "",
        "Regenerated by `benchmarks/quality/run.py`, one command per dataset (in each dataset's page). Test "
        "metric x100 at the checkpoint validation selected; differences paired by seed with 95% bootstrap "
        "intervals over seeds.",
        "",
        "| dataset | budget | SKD sampling | test | vs largest single | vs best single | vs average | vs none |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for f in sorted((out / "results").glob("*.json")):
        s = json.loads(f.read_text())
        for b, bud in s["budgets"].items():
            for c, r in bud["rows"].items():
                if c.startswith("skd-"):
                    vs = " | ".join(_cmp(r["vs"][k]) for k in COMPARE)
                    lines.append(f"| [{s['dataset']}](results/{f.stem}.md) | {b} | {c[4:]} | {r['mean']:.2f} | {vs} |")
    index.write_text("\n".join(lines) + "\n\n" + MARKER + reading)
