"""Kill -9 of `skdcache train`: SIGKILL a training run at random moments, `--resume` it, compare with an
uninterrupted run.

    python benchmarks/reliability/train_kill.py --trials 50   # full run: docs/reliability-train-kill.json
    python benchmarks/reliability/train_kill.py --trials 2    # what CI runs (tests/test_reliability.py)

A tiny student trains from a cached teacher for STEPS steps on the CPU, evaluating and checkpointing every
EVAL_EVERY steps. Each trial starts it, then 1-3 times SIGKILLs it and restarts it with `--resume`; each kill is
aimed at one of three moments: before the first checkpoint, inside a checkpoint (once the step line of a
checkpoint step is logged, plus a random delay of up to one measured checkpoint's time), or anywhere in the loop.
The last run resumes to the end. The final checkpoint's weights and the saved student must equal the
uninterrupted run's bit for bit, and metrics.jsonl must hold every step and evaluation once, in order, with no
torn line, equal to the uninterrupted run's log.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import skdcache_argv  # noqa: E402
from benchmarks.reliability.campaign import run_campaign  # noqa: E402

STEPS = 24
EVAL_EVERY = 3
MOMENTS = ("before_first_checkpoint", "in_checkpoint", "anywhere")


def build_fixture(work: Path) -> dict:
    """A tiny sequence teacher, its cache, and the data (train + a labelled validation split)."""
    from benchmarks.fixtures import make_model, write_split
    from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute

    teacher = make_model(work / "teacher", "sequence", layers=2, hidden=64, seed=3)
    data = work / "data"
    data.mkdir(exist_ok=True)
    write_split(data / "train.csv", 64, seed=5)
    write_split(data / "validation.csv", 16, seed=6)
    opts = TargetOptions(rows_per_block=16, batch_size=8, eval_split=None, progress=False)
    precompute(DataSpec(str(data)), [TeacherSpec("t", str(teacher))], work / "cache", opts)
    return {"teacher": teacher, "data": data, "cache": work / "cache"}


def command(fx: dict, out: Path, resume: bool) -> list[str]:
    return skdcache_argv(
        "train",
        data=fx["data"],
        cache=fx["cache"],
        student=fx["teacher"],
        student_layers=1,
        mode="single",
        teachers="t",
        output=out,
        max_steps=STEPS,
        eval_every=EVAL_EVERY,
        batch_size=8,
        num_workers=0,
        device="cpu",
        seed=0,
        resume=resume,
    )


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    steps = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if "eval" not in d:
            steps.append(d["step"])
    return steps


def checkpoint_step(out: Path) -> int | None:
    try:
        return json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def writing_checkpoint(out: Path) -> bool:
    """A temp file of an atomic write is on disk: the kill lands inside a checkpoint write."""
    ckpt = out / "checkpoint"
    return ckpt.is_dir() and any(".partial" in p.name for p in ckpt.iterdir())


def weights(out: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)["model"]
    student = load_file(out / "student" / "model.safetensors")
    return {"checkpoint": state, "student": student}


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return all(
        a[kind].keys() == b[kind].keys() and all(torch.equal(a[kind][k], b[kind][k]) for k in a[kind]) for kind in a
    )


def metrics_problems(out: Path, reference: list[str]) -> list[str]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    problems = []
    steps = []
    for i, line in enumerate(lines):
        try:
            d = json.loads(line)
        except ValueError:
            problems.append(f"line {i + 1} is torn")
            continue
        steps.append((d["step"], "eval" in d))
    if len(set(steps)) != len(steps):
        problems.append("duplicate steps")
    if [s for s, is_eval in steps if not is_eval] != list(range(1, STEPS + 1)):
        problems.append("step lines are not 1..STEPS once each, in order")
    if lines != reference:
        problems.append("metrics differ from the uninterrupted run")
    return problems


def kill_once(rng: random.Random, fx: dict, out: Path, resume: bool, moment: str, checkpoint_seconds: float) -> dict:
    env = {**os.environ, "SKDCACHE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(fx, out, resume), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = EVAL_EVERY
    if moment == "before_first_checkpoint":
        target = rng.randint(1, first - 1) if checkpoint_step(out) is None else None
        wait = lambda: target is None or (logged_steps(out)[-1:] or [0])[0] >= target  # noqa: E731
        delay = 0.0
    elif moment == "in_checkpoint":
        done = checkpoint_step(out) or 0
        target = done + EVAL_EVERY * rng.randint(1, max(1, (STEPS - done) // EVAL_EVERY - 1))
        wait = lambda: (logged_steps(out)[-1:] or [0])[0] >= target  # noqa: E731
        delay = rng.uniform(0, checkpoint_seconds)
    else:
        done = checkpoint_step(out) or 0
        target = rng.randint(done + 1, STEPS - 1) if done + 1 < STEPS else STEPS
        wait = lambda: (logged_steps(out)[-1:] or [0])[0] >= target  # noqa: E731
        delay = rng.uniform(0, 0.05)
    while proc.poll() is None and not wait():
        time.sleep(0.002)
    time.sleep(delay)
    in_write = writing_checkpoint(out)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {
        "moment": moment,
        "finished_before_kill": finished,
        "checkpoint_at_kill": checkpoint_step(out),
        "logged_at_kill": (logged_steps(out)[-1:] or [0])[0],
        "in_checkpoint_write": in_write,
    }


def fuzz(trials: int, seed: int, work: Path, log=print) -> dict:
    fx = build_fixture(work)
    env = {**os.environ, "SKDCACHE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    reference = work / "reference"
    t0 = time.perf_counter()
    subprocess.run(command(fx, reference, False), check=True, capture_output=True, env=env)
    run_seconds = time.perf_counter() - t0
    ref_weights = weights(reference)
    ref_lines = (reference / "metrics.jsonl").read_text().splitlines()
    # one checkpoint's measured time: the gap between a checkpoint step's line and trainer.json is not on disk
    # after the run, so take the run's seconds per step times the checkpoint's share as an upper bound
    checkpoint_seconds = min(0.5, run_seconds / STEPS * 2)
    rng = random.Random(seed)
    results = {"trials": 0, "equal_weights": 0, "clean_metrics": 0, "kills": 0, "failures": []}
    results.update({f"kills_{m}": 0 for m in MOMENTS})
    results["kills_in_checkpoint_write"] = 0
    results["kills_before_first_checkpoint_landed"] = 0
    for trial in range(trials):
        out = work / f"trial-{trial}"
        kills = [
            kill_once(rng, fx, out, i > 0, rng.choice(MOMENTS), checkpoint_seconds) for i in range(rng.randint(1, 3))
        ]
        done = subprocess.run(command(fx, out, True), capture_output=True, text=True, env=env)
        ok_weights = done.returncode == 0 and same_weights(weights(out), ref_weights)
        problems = metrics_problems(out, ref_lines) if done.returncode == 0 else [f"exit {done.returncode}"]
        results["trials"] += 1
        results["equal_weights"] += ok_weights
        results["clean_metrics"] += not problems
        results["kills"] += len(kills)
        for k in kills:
            results[f"kills_{k['moment']}"] += 1
            results["kills_in_checkpoint_write"] += k["in_checkpoint_write"]
            results["kills_before_first_checkpoint_landed"] += (
                k["checkpoint_at_kill"] is None and not k["finished_before_kill"]
            )
        if not ok_weights or problems:
            results["failures"].append(
                {"trial": trial, "kills": kills, "problems": problems, "stderr": done.stderr[-600:]}
            )
        seen = [(k["moment"], k["checkpoint_at_kill"], k["logged_at_kill"], k["in_checkpoint_write"]) for k in kills]
        verdict = "equal" if ok_weights else "DIFFER"
        log(f"trial {trial}: kills={seen} weights={verdict} metrics={'ok' if not problems else problems}")
        shutil.rmtree(out, ignore_errors=True)
    results["seconds_per_uninterrupted_run"] = round(run_seconds, 1)
    results["steps"], results["eval_every"] = STEPS, EVAL_EVERY
    return results


def main() -> None:
    run_campaign(__doc__, fuzz, "trials", 50, "reliability-train-kill.json")


if __name__ == "__main__":
    main()
