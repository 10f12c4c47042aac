"""Kill -9 fuzz: interrupt precompute at random moments, resume, and check the cache equals an uninterrupted run.

    python benchmarks/reliability/kill_fuzz.py --trials 100      # the full run (writes docs/reliability-fuzz.json)
    python benchmarks/reliability/kill_fuzz.py --trials 3        # what CI runs (tests/test_reliability.py)

Each trial: a fresh cache root; 1-3 times, start `skdcache precompute` and SIGKILL it in the writing phase:
once a seeded number of block markers (1 .. n_blocks - 1) is on disk, after a further random delay of up to
one block's time (so kills land inside block writes too, not only between them); then run it to completion.
The final cache must hold exactly the reference arrays (no missing, duplicated or corrupt rows), pass
`verify`, and say "complete". A trial counts as killed mid-write when a killed process had written some, but not
all, of the blocks left to it, and as resumed when the final run reported "resumed".
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.harness import skdcache_argv  # noqa: E402
from benchmarks.reliability.campaign import run_campaign  # noqa: E402


def build_fixture(work: Path, rows: int = 400) -> tuple[Path, Path]:
    """A tiny MLM teacher (token-level targets + hidden states: every array kind) and a data directory."""
    from benchmarks.fixtures import make_model, write_split

    teacher = make_model(work / "teacher", "mlm", layers=2, hidden=32, seed=3)
    data = work / "data"
    data.mkdir(exist_ok=True)
    write_split(data / "train.csv", rows, seed=5)
    return teacher, data


def command(teacher: Path, data: Path, cache: Path) -> list[str]:
    """`skdcache precompute` of the fixture: small blocks (many kill points), every array kind."""
    return skdcache_argv(
        "precompute",
        data=data,
        teacher=f"t={teacher}",
        cache=cache,
        rows_per_block=16,
        batch_size=4,
        hidden_layers="all",
        hidden_tokens="all",
        top_k=8,
        eval_split="",
    )


def snapshot(cache: Path) -> dict[str, np.ndarray]:
    (group,) = [p for p in cache.glob("*/*") if (p / "zarr.json").exists()]
    g = zarr.open_group(str(group), mode="r")
    index = g["token_index"][:]
    hidden_index = g["hidden_index"][:]
    out = {"token_index": index, "hidden_index": hidden_index}
    for name, idx in (
        ("topk_ids", index),
        ("topk_logprobs", index),
        ("tail_logmass", index),
        ("positions", index),
        ("hidden", hidden_index),
    ):
        out[name] = np.concatenate([g[name][s : s + c] for s, c in idx])  # only the rows' true extents
    return out


def verify_clean(cache: Path) -> bool:
    """The root exists and `verify` finds nothing wrong in any of its teacher caches."""
    from skdcache.cache.catalog import verify_root

    return cache.exists() and all(not problems for problems in verify_root(cache).values())


def markers(cache: Path) -> int:
    """Block markers on disk in the cache's (only) teacher group."""
    return len(list(cache.glob("*/*/_blocks/[0-9]*.json")))


def run_trial(rng: random.Random, teacher: Path, data: Path, cache: Path, n_blocks: int, block_seconds: float) -> dict:
    env = {**os.environ, "SKDCACHE_NO_PROGRESS": "1"}
    kills = rng.randint(1, 3)
    mid_write = 0
    for _ in range(kills):
        at_start = markers(cache)
        if n_blocks - at_start < 2:  # nothing left to interrupt mid-write
            break
        target = at_start + rng.randint(1, n_blocks - at_start - 1)  # a block this process writes
        extra = rng.uniform(0, block_seconds)
        proc = subprocess.Popen(
            command(teacher, data, cache), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while proc.poll() is None and markers(cache) < target:
            time.sleep(0.005)
        time.sleep(extra)
        at_kill = markers(cache)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += at_start < at_kill < n_blocks  # this process wrote blocks and was killed before the last
    done = subprocess.run(command(teacher, data, cache), env=env, capture_output=True, text=True)
    return {
        "kills": kills,
        "killed_mid_write": mid_write,
        "returncode": done.returncode,
        "stdout": done.stdout[-400:],
        "stderr": done.stderr[-400:],
    }


def fuzz(trials: int, seed: int, work: Path) -> dict:
    teacher, data = build_fixture(work)
    reference = work / "reference"
    t0 = time.perf_counter()
    subprocess.run(
        command(teacher, data, reference),
        check=True,
        capture_output=True,
        env={**os.environ, "SKDCACHE_NO_PROGRESS": "1"},
    )
    full_seconds = time.perf_counter() - t0
    expected = snapshot(reference)
    n_blocks = markers(reference)
    times = sorted(p.stat().st_mtime for p in reference.glob("*/*/_blocks/[0-9]*.json"))
    block_seconds = (times[-1] - times[0]) / max(1, n_blocks - 1)  # the writing phase's time per block
    rng = random.Random(seed)
    outcomes = {"trials": 0, "equal": 0, "verify_clean": 0, "resumed": 0, "killed_mid_write": 0, "failures": []}
    for trial in range(trials):
        cache = work / f"trial-{trial}"
        result = run_trial(rng, teacher, data, cache, n_blocks, block_seconds)
        outcomes["trials"] += 1
        got = snapshot(cache) if result["returncode"] == 0 else {}
        equal = bool(got) and all(np.array_equal(got[k], expected[k]) for k in expected)
        clean = verify_clean(cache)
        outcomes["equal"] += equal
        outcomes["verify_clean"] += clean
        outcomes["resumed"] += "resumed" in result["stdout"]
        outcomes["killed_mid_write"] += result["killed_mid_write"] > 0
        if not (equal and clean):
            outcomes["failures"].append({"trial": trial, **result})
        shutil.rmtree(cache, ignore_errors=True)
        print(
            f"trial {trial}: kills={result['kills']} mid-write={result['killed_mid_write']} "
            f"resumed={'resumed' in result['stdout']} equal={equal} verify={'ok' if clean else 'FAIL'}",
            flush=True,
        )
    outcomes["seconds_per_uninterrupted_run"] = full_seconds
    outcomes["blocks"] = n_blocks
    outcomes["seconds_per_block"] = block_seconds
    return outcomes


def main() -> None:
    run_campaign(__doc__, fuzz, "trials", 100, "reliability-fuzz.json")


if __name__ == "__main__":
    main()
