"""DDP student training: wall time of 2 torchrun processes vs 1, same global batch, on this machine.

    python benchmarks/perf/ddp.py                 # CPU: ~5 min on 2 cores; writes docs/scaling-ddp.json

Teacher: MiniLM-L6 (sequence head), cached once over 2,000 bundled tweets. Student: MiniLM-L6's first 2 layers,
global batch 32, 60 steps of `skd` from the cache, no evaluation. Three runs of the same command line:
1 process with every thread, 1 process with 1 thread, and `--nproc 2` (1 thread each). The figure is the
training loop's steps/s from run.json, and the wall time of the whole command (process start included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
from skdcache.demo import pretrained_encoder

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import DOCS, WORK, command, machine, skdcache_argv, write_json  # noqa: E402
from benchmarks.perf.common import make_model, make_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--work", default=str(WORK / "ddp"))
    parser.add_argument("--out", default=str(DOCS))
    args = parser.parse_args()
    work = Path(args.work)
    data = make_rows(work / "data", 2000)
    teacher = make_model(work / "teacher-L6", 6)
    precompute(
        DataSpec(str(data)),
        [TeacherSpec("L6", str(teacher))],
        work / "cache",
        TargetOptions(max_length=64, eval_split=None, progress=False),
    )
    base = dict(
        data=data,
        cache=work / "cache",
        student=pretrained_encoder(),
        student_layers=2,
        max_steps=args.steps,
        batch_size=32,
        max_length=64,
        eval_split="",
        num_workers=1,
    )
    results = {"machine": machine(), "command": command(), "steps": args.steps, "runs": {}}
    for slug, label, extra, env in (
        ("1p-all", "1 process, all threads", {}, {}),
        ("1p-1t", "1 process, 1 thread", {}, {"OMP_NUM_THREADS": "1"}),
        ("2p-1t", "2 processes (DDP), 1 thread each", {"nproc": 2}, {"OMP_NUM_THREADS": "1"}),
    ):
        out = work / "runs" / slug
        t0 = time.perf_counter()
        subprocess.run(skdcache_argv("train", **base, output=out, **extra), check=True, env={**os.environ, **env})
        wall = time.perf_counter() - t0
        run = json.loads((out / "run.json").read_text())
        results["runs"][label] = {"wall_seconds": wall, "steps_per_second": run["steps_per_second"]}
        print(f"{label}: {run['steps_per_second']:.2f} steps/s, {wall:.0f}s wall", flush=True)
    ref = results["runs"]["1 process, 1 thread"]["steps_per_second"]
    for r in results["runs"].values():
        r["speedup_vs_1_thread"] = r["steps_per_second"] / ref
    write_json(Path(args.out, "scaling-ddp.json"), results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
