"""Malformed metadata fuzz: mutate a cache's metadata at random, run ls / info / verify / train on it.

    python benchmarks/reliability/metadata_fuzz.py --mutations 1000  # full run: docs/reliability-metadata-fuzz.json
    python benchmarks/reliability/metadata_fuzz.py --mutations 24    # what CI runs (tests/test_reliability.py)

One small real cache is built once (a tiny BERT MLM teacher: top-k, tail, positions and every token's hidden
state, 48 rows in 3 blocks). Each mutation damages one metadata file, or the index at the end of one shard
file (bit flips, truncations, wrong JSON types, huge or negative numbers, names with `../`, deleted keys,
forged shard indexes with a valid checksum), runs the four commands in this process through the CLI's
`main`, then restores the file. Every command must either
  - exit 2 with one line on stderr (no traceback), or
  - succeed, and then what it read must be right: a clean `verify` or a finished `train` means every row
    still reads back equal to the unmutated cache;
`verify` may also exit 1 naming the damage, with skdcache's own messages (not a raw Python exception).
Also: no call runs past a timeout, none allocates memory in proportion to a forged size (the address space is
capped and peak RSS is watched), and no file is created or changed anywhere in the work folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.reliability.campaign import run_campaign  # noqa: E402

CALL_TIMEOUT_S = 60
RSS_GROWTH_LIMIT = 512 * 2**20  # a forged 10^12-row shape must never cost memory; normal calls stay far below
AS_HEADROOM = 3 * 2**30  # address space allowed above what the process holds when the fuzz starts
HUGE = 10**12
RAW_PYTHON_ERRORS = (
    "TypeError",
    "KeyError",
    "AttributeError",
    "IndexError",
    "MemoryError",
    "RecursionError",
    "OverflowError",
    "ZeroDivisionError",
    "UnicodeDecodeError",
)


class CallTimeout(BaseException):
    """Raised by the alarm: a command ran past CALL_TIMEOUT_S."""


def build_fixture(work: Path) -> dict:
    """The cache under test, the student's data and the reference rows every successful read must return."""
    from benchmarks.fixtures import make_model, write_split
    from skdcache import DataSpec, TargetOptions, TeacherCache, TeacherSpec, precompute

    teacher = make_model(work / "teacher", "mlm", layers=1, hidden=32, seed=3)
    data = work / "data"
    data.mkdir(exist_ok=True)
    write_split(data / "train.csv", 48, seed=5)
    opts = TargetOptions(
        rows_per_block=16, batch_size=8, top_k=4, hidden_layers="last", hidden_tokens="all", eval_split=None
    )
    opts = TargetOptions(**{**opts.__dict__, "progress": False})
    (result,) = precompute(DataSpec(str(data)), [TeacherSpec("t", str(teacher))], work / "cache", opts)
    cache = TeacherCache(result.path)
    return {
        "work": work,
        "teacher": teacher,
        "data": data,
        "root": work / "cache",
        "group": result.path,
        "reference": read_all(result.path),
        "n_rows": cache.n_rows,
    }


def read_all(group: Path) -> dict[str, np.ndarray]:
    from skdcache import TeacherCache

    cache = TeacherCache(group)
    targets = cache.read(np.arange(cache.n_rows))
    return {k: v.numpy() for k, v in vars(targets).items() if v is not None}


# ---- mutation targets and mutations -------------------------------------------------------------------------------
def targets(fx: dict) -> list[tuple[str, Path]]:
    group, root = fx["group"], fx["root"]
    out = [("manifest", group / "zarr.json"), ("group_zarr_json", group / "zarr.json")]
    out += [("dataset_json", p) for p in root.glob("*/dataset.json")]
    out += [("array_zarr_json", p) for p in sorted(group.glob("*/zarr.json"))]
    out += [("block_marker", p) for p in sorted(group.glob("_blocks/[0-9]*.json"))]
    out += [("shard_index", p) for p in sorted(group.glob("*/c/**/*")) if p.is_file()]
    return out


def _paths(obj, prefix=()) -> list[tuple]:
    """Every key path inside a JSON value (dict keys and list positions)."""
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


def _set(obj, path: tuple, value, delete: bool = False):
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _wrong_value(rng: random.Random, old) -> tuple[str, object]:
    choices = [
        ("huge", HUGE),
        ("huge_negative", -HUGE),
        ("negative", -1),
        ("zero", 0),
        ("string", "x"),
        ("dotdot", "../../escape"),
        ("null", None),
        ("list", [HUGE, HUGE]),
        ("object", {"a": 1}),
        ("float", 1.5),
        ("bool", True),
        ("nan", float("nan")),
    ]
    if isinstance(old, list) and old:
        choices.append(("list_huge", [HUGE] * len(old)))
        choices.append(("list_short", old[:-1]))
    return rng.choice(choices)


def mutate_json(rng: random.Random, raw: bytes, subtree: tuple = ()) -> tuple[str, bytes]:
    """One structural change to a JSON file, or byte damage (flip, truncate) to it."""
    roll = rng.random()
    if roll < 0.12:
        i = rng.randrange(len(raw))
        out = bytearray(raw)
        out[i] ^= 1 << rng.randrange(8)
        return f"bitflip@{i}", bytes(out)
    if roll < 0.2:
        cut = rng.randrange(len(raw))
        return f"truncate@{cut}", raw[:cut]
    doc = json.loads(raw)
    base = doc
    for key in subtree:
        base = base[key]
    paths = _paths(base)
    path = (*subtree, *rng.choice(paths))
    if rng.random() < 0.2 and not isinstance(path[-1], int):
        return f"delete {'/'.join(map(str, path))}", json.dumps(_set(doc, path, None, delete=True)).encode()
    if isinstance(path[-1], str) and rng.random() < 0.1:  # rename a key to a path-escaping name
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent["../" + path[-1]] = parent.pop(path[-1])
        return f"rename {'/'.join(map(str, path))} -> ../", json.dumps(doc).encode()
    old = doc
    for key in path:
        old = old[key]
    kind, value = _wrong_value(rng, old)
    return f"{kind} {'/'.join(map(str, path))}", json.dumps(_set(doc, path, value)).encode()


def mutate_shard(rng: random.Random, raw: bytes, per_shard_guess: int) -> tuple[str, bytes]:
    """Damage the index at the end of a shard file: flips, truncation, or forged (offset, nbytes) pairs whose
    crc32c is recomputed, so only a reader that checks bounds can tell."""
    import google_crc32c

    n = per_shard_guess
    size = n * 16 + 4
    if len(raw) < size:
        return "truncate@0", b""
    roll = rng.random()
    if roll < 0.25:
        i = len(raw) - size + rng.randrange(size)
        out = bytearray(raw)
        out[i] ^= 1 << rng.randrange(8)
        return f"index_bitflip@{i}", bytes(out)
    if roll < 0.4:
        cut = rng.randrange(len(raw))
        return f"truncate@{cut}", raw[:cut]
    index = np.frombuffer(raw[-size:-4], dtype="<u8").reshape(n, 2).copy()
    chunk = rng.randrange(n)
    kind, value = rng.choice(
        [
            ("offset_huge", (HUGE, None)),
            ("nbytes_huge", (None, HUGE)),
            ("nbytes_zero", (None, 0)),
            ("offset_past_end", (len(raw) + 10, None)),
            ("offset_into_index", (len(raw) - size, None)),
            ("swap_with_next", "swap"),
            ("empty_marker", (2**64 - 1, 2**64 - 1)),
        ]
    )
    if value == "swap":
        other = (chunk + 1) % n
        index[[chunk, other]] = index[[other, chunk]]
    else:
        offset, nbytes = value
        if offset is not None:
            index[chunk, 0] = offset
        if nbytes is not None:
            index[chunk, 1] = nbytes
    body = index.astype("<u8").tobytes()
    crc = google_crc32c.value(body).to_bytes(4, "little")
    return f"{kind} chunk {chunk} (crc recomputed)", raw[:-size] + body + crc


def per_shard(array_dir: Path) -> int:
    meta = json.loads((array_dir / "zarr.json").read_text())
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner = meta["codecs"][0]["configuration"]["chunk_shape"][0]
    return shard // inner


def make_mutation(rng: random.Random, kind: str, path: Path) -> tuple[str, bytes]:
    raw = path.read_bytes()
    if kind == "shard_index":
        array_dir = next(p.parent for p in path.parents if p.name == "c")
        return mutate_shard(rng, raw, per_shard(array_dir))
    if kind == "manifest":
        return mutate_json(rng, raw, ("attributes", "skdcache"))
    return mutate_json(rng, raw)


# ---- running the commands under guards -----------------------------------------------------------------------------
def _alarm(signum, frame):
    raise CallTimeout


def run_cli(args: list[str]) -> dict:
    """`skdcache ARGS` in this process: exit status, stdout, stderr, seconds, peak-RSS growth."""
    from skdcache.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    argv, sys.argv = sys.argv, ["skdcache", *args]
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CALL_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CallTimeout:
        code = "timeout"
    except BaseException as exc:  # noqa: BLE001  a traceback: the failure this fuzz hunts
        import traceback

        code = "traceback"
        err.write("".join(traceback.format_exception(exc))[-1500:])
    finally:
        signal.alarm(0)
        sys.argv = argv
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "seconds": time.perf_counter() - t0, "rss": rss}


def reads_right(fx: dict) -> str | None:
    """None when every row reads back equal to the reference, else why not."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CALL_TIMEOUT_S)
    try:
        got = read_all(fx["group"])
    except CallTimeout:
        return "reading the rows hung"
    except BaseException as exc:  # noqa: BLE001
        return f"rows unreadable: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.alarm(0)
    for k, v in fx["reference"].items():
        if k not in got or got[k].shape != v.shape or not np.array_equal(got[k], v, equal_nan=True):
            return f"rows read back differ in {k}"
    return None


def judge(command: str, result: dict, fx: dict) -> tuple[str, str | None]:
    """(outcome, failure or None) of one command on a mutated cache."""
    code, err, text = result["code"], result["err"], result["out"] + result["err"]
    if code in ("timeout", "traceback"):
        return code, f"{code}: {err.strip()[-600:]}"
    if result["rss"] > RSS_GROWTH_LIMIT:
        return "memory", f"peak RSS grew by {result['rss'] / 2**20:.0f} MiB"
    raw = [name for name in RAW_PYTHON_ERRORS if f"{name}:" in text or f"{name}(" in text]
    if code == 2:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: ") or raw:
            return "bad_error", f"exit 2 but stderr is not one skdcache line: {err.strip()[-400:]}"
        return "error_exit_2", None
    if code == 1 and command == "verify":
        if raw:
            return "bad_error", f"verify reported a raw Python error: {text.strip()[-400:]}"
        return "detected", None
    if code == 0:
        if command in ("verify", "train"):
            wrong = reads_right(fx)
            if wrong:
                return "wrong_success", f"{command} succeeded but {wrong}"
        return "success", None
    return "bad_exit", f"exit {code}: {text.strip()[-400:]}"


def tree(path: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file() and skip not in p.parents
    }


@contextlib.contextmanager
def capped_address_space():
    """Cap this process's address space a few GiB above its current size: an allocation sized by a forged
    shape fails instead of swapping the machine (and shows up as a MemoryError failure)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    cap = vm + AS_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def commands(fx: dict, out: Path) -> dict[str, list[str]]:
    train = ["-q", "train", "--data", str(fx["data"]), "--cache", str(fx["root"]), "--student", str(fx["teacher"])]
    train += ["--student-layers", "1", "--mode", "single", "--teachers", "t", "--output", str(out)]
    train += ["--max-steps", "1", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--eval-split", ""]
    return {
        "verify": ["-q", "verify", "--cache", str(fx["root"])],
        "ls": ["-q", "ls", "--cache", str(fx["root"]), "--json"],
        "info": ["-q", "info", str(fx["group"])],
        "train": train,
    }


def fuzz(mutations: int, seed: int, work: Path, log=print) -> dict:
    os.environ["SKDCACHE_NO_PROGRESS"] = "1"
    fx = build_fixture(work)
    out = work / "train-out"
    cmds = commands(fx, out)
    for name, args in cmds.items():  # the unmutated cache passes every command (and warms imports)
        result = run_cli(args)
        if result["code"] != 0:
            raise RuntimeError(f"{name} fails on the unmutated cache: {result['err'][-800:]}")
        shutil.rmtree(out, ignore_errors=True)
    rng = random.Random(seed)
    chosen = targets(fx)
    kinds = sorted({k for k, _ in chosen})
    results = {
        "mutations": 0,
        "by_target": Counter(),
        "by_outcome": {c: Counter() for c in cmds},
        "failures": [],
        "seconds_per_call": {c: 0.0 for c in cmds},
    }
    from skdcache.cache import reader

    in_memory = reader.IN_MEMORY_BYTES
    before = tree(work, out)
    t_start = time.perf_counter()
    with capped_address_space():
        for i in range(mutations):
            kind = kinds[i % len(kinds)]  # every target kind equally often
            reader.IN_MEMORY_BYTES = 0 if i % 2 else in_memory  # odd: the direct shard reader reads every array
            path = rng.choice([p for k, p in chosen if k == kind])
            original, stat = path.read_bytes(), path.stat()
            what, damaged = make_mutation(rng, kind, path)
            path.write_bytes(damaged)
            label = f"{kind} {path.relative_to(work)}: {what}"
            try:
                for name, args in cmds.items():
                    result = run_cli(args)
                    outcome, failure = judge(name, result, fx)
                    results["by_outcome"][name][outcome] += 1
                    results["seconds_per_call"][name] += result["seconds"]
                    if failure:
                        results["failures"].append({"mutation": i, "target": label, "command": name, "why": failure})
                        log(f"FAIL #{i} {name} on {label}: {failure[:300]}")
                    shutil.rmtree(out, ignore_errors=True)
            finally:
                path.write_bytes(original)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            after = tree(work, out)
            rel = str(path.relative_to(work))
            changed = sorted(k for k in set(before) | set(after) if k != rel and before.get(k) != after.get(k))
            if changed:
                results["failures"].append({"mutation": i, "target": label, "command": "*", "why": f"wrote {changed}"})
                log(f"FAIL #{i}: files changed {changed[:5]}")
                before = after
            results["mutations"] += 1
            results["by_target"][kind] += 1
            if (i + 1) % 50 == 0:
                log(f"{i + 1} mutations, {len(results['failures'])} failures, {time.perf_counter() - t_start:.0f} s")
    reader.IN_MEMORY_BYTES = in_memory
    results["by_target"] = dict(results["by_target"])
    results["by_outcome"] = {c: dict(v) for c, v in results["by_outcome"].items()}
    n = max(1, results["mutations"])
    results["seconds_per_call"] = {c: round(s / n, 3) for c, s in results["seconds_per_call"].items()}
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    return results


def main() -> None:
    run_campaign(__doc__, fuzz, "mutations", 1000, "reliability-metadata-fuzz.json")


if __name__ == "__main__":
    main()
