"""Rerun finished study runs with one setting changed: a control next to the tables, paired by seed.

    python benchmarks/quality/rerun.py \
        .bench-work/quality/stsb-cc/students/minilm-L6+minilm-L3+minilm-L6-cut2-student-L2/short \
        --config single-minilm-L6 --set alpha=1.0

Each `<config>-s<seed>` run is retrained with the same config (data, cache, seed, steps) except the `--set`
fields, into `<budget folder>-rerun/<setting>/` (a finished rerun is reused); the test metric of each seed is
printed next to the original's.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from skdcache.data.rows import DataSpec
from skdcache.train import train
from skdcache.training.config import TrainConfig

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.reuse import finished_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("budget_folder", type=Path, help="a study's students/<team>/<budget> folder")
    p.add_argument("--config", required=True, help="e.g. single-minilm-L6")
    p.add_argument("--set", action="append", required=True, help="FIELD=VALUE of TrainConfig, e.g. alpha=1.0")
    args = p.parse_args()
    names = {f.name for f in fields(TrainConfig)}
    runs = sorted(args.budget_folder.glob(f"{args.config}-s*/run.json"))
    if not runs:
        raise SystemExit(f"no finished {args.config}-s*/run.json under {args.budget_folder}")
    out_root = args.budget_folder.with_name(args.budget_folder.name + "-rerun") / "+".join(args.set)
    for run in runs:
        original = json.loads(run.read_text())
        cfg = {k: v for k, v in original["config"].items() if k in names}
        cfg["data"] = DataSpec(**cfg["data"])
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in names:
                raise SystemExit(f"--set {item}: {key!r} is not a TrainConfig field")
            old = cfg.get(key)  # numbers and booleans as JSON (`false`, not bool("False") == True)
            cfg[key] = value if old is None or isinstance(old, str) else type(old)(json.loads(value))
        cfg["output"] = str(out_root / run.parent.name)
        config = TrainConfig(**cfg)
        test = (finished_run(config) or train(config))["test"]
        metric = test["primary"]
        print(f"{run.parent.name}: {metric} {test[metric]:.4f} (original {original['test'][metric]:.4f})", flush=True)


if __name__ == "__main__":
    main()
