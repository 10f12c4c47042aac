"""Write faults beside kill -9: the disk filling up mid-write, and two `precompute` processes on one cache at once.

    python benchmarks/reliability/write_faults.py --trials 40     # the full run (docs/reliability-write-faults.json)
    python benchmarks/reliability/write_faults.py --trials 2      # what CI runs (tests/test_reliability.py)

Each trial runs both scenarios with the command line a user types (`kill_fuzz.command`: token top-k targets and
all-token hidden states, 16-row blocks), each on a fresh cache root:

- disk full: the root is a tmpfs (needs root, to mount it) sized to a seeded 10-90% of what the cache needs.
  `precompute` must fail with exit status 2 and exactly one stderr line saying "disk full"; the tmpfs is then grown
  and the same command rerun, which must finish ("resumed" when blocks had been finished before the disk filled).
- two writers: a second `precompute` of the same teacher and root starts a seeded 0-50% of an uninterrupted
  run's time after the first (a process spends its first seconds loading, so this spreads the second's lock
  attempt over the first's writing phase and just after it). Each process must either finish (exit 0: it wrote
  the cache, or found it complete) or be refused with one stderr line naming "another process" (exit 2); at
  least one finishes, and a rerun finds the cache complete ("cached").

Either way the final cache must hold exactly the reference arrays (an uninterrupted run on an ordinary disk) and
pass `verify`: nothing lost, nothing served half-written.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.reliability.campaign import run_campaign  # noqa: E402
from benchmarks.reliability.kill_fuzz import build_fixture, command, markers, snapshot, verify_clean  # noqa: E402

ENV = {**os.environ, "SKDCACHE_NO_PROGRESS": "1"}


def tmpfs_use(teacher: Path, data: Path, mount: Path) -> int:
    """Bytes the cache takes on a tmpfs: written once into a roomy one, read off the file system."""
    mount.mkdir(exist_ok=True)
    mount_tmpfs(mount, 1 << 20)
    try:
        before = used(mount)
        subprocess.run(command(teacher, data, mount / "cache"), check=True, capture_output=True, env=ENV)
        return used(mount) - before
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def used(path: Path) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def one_line(stderr: str, says: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and says in lines[0]


def mount_tmpfs(path: Path, kib: int, remount: bool = False) -> None:
    if remount:
        args = ["mount", "-o", f"remount,size={kib}k", str(path)]
    else:
        args = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)]
    subprocess.run(args, check=True, capture_output=True)


def can_mount(work: Path) -> bool:
    probe = work / "probe-tmpfs"
    probe.mkdir(exist_ok=True)
    try:
        mount_tmpfs(probe, 64)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


def disk_full_trial(rng: random.Random, teacher: Path, data: Path, mount: Path, needed: int) -> dict:
    share = rng.uniform(0.1, 0.9)
    mount.mkdir(exist_ok=True)
    mount_tmpfs(mount, max(16, int(needed * share) // 1024))
    try:
        cache = mount / "cache"
        full = subprocess.run(command(teacher, data, cache), env=ENV, capture_output=True, text=True)
        blocks_kept = markers(cache) if cache.exists() else 0
        mount_tmpfs(mount, 4 * needed // 1024 + 1024, remount=True)
        again = subprocess.run(command(teacher, data, cache), env=ENV, capture_output=True, text=True)
        got = snapshot(cache) if again.returncode == 0 else {}
        clean = verify_clean(cache)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    return {
        "share_of_needed_space": round(share, 3),
        "failed_in_one_line": full.returncode == 2 and one_line(full.stderr, "disk full"),
        "blocks_kept": blocks_kept,
        "resumed": "resumed" in again.stdout,
        "finished": again.returncode == 0,
        "got": got,
        "verify_clean": clean,
        "stderr": full.stderr[-400:] + again.stderr[-400:],
    }


def two_writers_trial(rng: random.Random, teacher: Path, data: Path, cache: Path, full_seconds: float) -> dict:
    delay = rng.uniform(0, full_seconds / 2)
    first = subprocess.Popen(command(teacher, data, cache), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    second = subprocess.Popen(command(teacher, data, cache), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs = [(p.returncode, out.decode(), err.decode()) for p in (first, second) for out, err in [p.communicate()]]
    refused = sum(rc == 2 and one_line(err, "another process") for rc, _, err in outs)
    said = [status(rc, out) for rc, out, _ in outs]
    finished = sum(rc == 0 for rc, _, _ in outs)
    rerun = subprocess.run(command(teacher, data, cache), env=ENV, capture_output=True, text=True)
    return {
        "delay_s": round(delay, 2),
        "finished": finished,
        "refused_in_one_line": refused,
        "statuses": said,
        "as_expected": finished >= 1 and finished + refused == 2 and "cached" in rerun.stdout,
        "got": snapshot(cache) if rerun.returncode == 0 else {},
        "verify_clean": verify_clean(cache),
        "stderr": " | ".join(err[-300:] for _, _, err in outs if err),
    }


def status(returncode: int, stdout: str) -> str:
    """What a precompute process reported: computed / resumed / cached, refused (exit 2), or failed."""
    if returncode == 2:
        return "refused"
    words = [w for w in ("computed", "resumed", "cached") if w in stdout.split()]  # the status column of its table
    return words[0] if returncode == 0 and words else "failed"


def fuzz(trials: int, seed: int, work: Path) -> dict:
    teacher, data = build_fixture(work)
    reference = work / "reference"
    t0 = time.perf_counter()
    subprocess.run(command(teacher, data, reference), check=True, capture_output=True, env=ENV)
    full_seconds = time.perf_counter() - t0
    expected, mountable = snapshot(reference), can_mount(work)
    needed = tmpfs_use(teacher, data, work / "tmpfs-size") if mountable else 0
    rng = random.Random(seed)
    out: dict = {"trials": trials, "seconds_per_uninterrupted_run": full_seconds, "cache_bytes_on_tmpfs": needed}
    out["disk_full"] = {"trials": 0, "failed_in_one_line": 0, "blocks_kept": 0, "resumed": 0, "equal": 0}
    out["two_writers"] = {"trials": 0, "refused_in_one_line": 0, "both_finished": 0, "equal": 0, "statuses": {}}
    out["failures"] = []
    if not mountable:
        out["disk_full"]["skipped"] = "cannot mount a tmpfs here (needs root)"
    for trial in range(trials):
        runs = []
        if mountable:
            runs.append(("disk_full", disk_full_trial(rng, teacher, data, work / f"tmpfs-{trial}", needed)))
        runs.append(("two_writers", two_writers_trial(rng, teacher, data, work / f"two-{trial}", full_seconds)))
        for scenario, result in runs:
            got = result.pop("got")
            equal = bool(got) and all(np.array_equal(got[k], expected[k]) for k in expected)
            tally = out[scenario]
            tally["trials"] += 1
            tally["equal"] += equal
            if scenario == "disk_full":
                ok = result["failed_in_one_line"] and result["finished"]
                tally["failed_in_one_line"] += result["failed_in_one_line"]
                tally["blocks_kept"] += result["blocks_kept"] > 0
                tally["resumed"] += result["resumed"]
            else:
                ok = result["as_expected"]
                tally["refused_in_one_line"] += result["refused_in_one_line"]
                tally["both_finished"] += result["finished"] == 2
                pair = " + ".join(result["statuses"])
                tally["statuses"][pair] = tally["statuses"].get(pair, 0) + 1
            if not (ok and equal and result["verify_clean"]):
                out["failures"].append({"trial": trial, "scenario": scenario, **result})
            shown = {k: v for k, v in result.items() if k != "stderr"}
            print(f"trial {trial} {scenario}: equal={equal} {shown}", flush=True)
    return out


def main() -> None:
    run_campaign(__doc__, fuzz, "trials", 40, "reliability-write-faults.json")


if __name__ == "__main__":
    main()
