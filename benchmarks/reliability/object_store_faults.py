"""Object-store fault campaign: publish and mirror a teacher cache through a proxy that injects faults.

    python benchmarks/reliability/object_store_faults.py --trials 100   # writes docs/reliability-object-store.json
    python benchmarks/reliability/object_store_faults.py --trials 3     # about what CI runs

A tiny MLM teacher's cache (every array kind) is computed once. Each trial draws a fault rate in [0.05, 0.35] and
publishes that group to a fresh prefix of moto's S3 server through `faulty_s3.FaultyProxy` (connection resets
before and after the server acted, 500 and 503 answers, stalls past the client's read timeout, bodies cut
half-way), then mirrors it into a fresh local mirror through the same proxy; every other trial interrupts that
mirror after a few files and fetches again, which must resume (fetch only the files still missing).

Checked against the server directly, past the proxy:

- partial group visible: a watcher polls the prefix during the publish; whenever the group's zarr.json is
  there, every data file must be there at its local size.
- data lost: after a publish reported success, a stored file missing or differing from the local one; after a
  publish gave up (one-line CacheError), a visible zarr.json.
- failures: a mirror not byte-equal to the local group, not `verify`-clean, a resumed mirror that fetched files
  it already had, or any error other than the one-line CacheError after the retry budget.

The JSON is written only when every trial has run.
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

if not __package__:  # run as a file: the clone's root on the path, as `python -m` from the root has it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.reliability.campaign import run_campaign  # noqa: E402
from benchmarks.reliability.faulty_s3 import KINDS, FaultyProxy, direct_fs, moto_server, s3_environment  # noqa: E402

BUCKET = "faults"
RETRY_S, TIMEOUT_S, HOLD_S = 30.0, 1.0, 5.0  # a stall costs one read timeout; the budget outlasts bad streaks


class Interrupted(Exception):
    """Stands for a mirror killed half-way (not a network error, so it is not retried)."""


def build_group(work: Path) -> Path:
    """One complete local teacher group (token-level targets and hidden states: every array kind)."""
    from benchmarks.fixtures import make_model, write_split
    from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute

    teacher = make_model(work / "teacher", "mlm", layers=1, hidden=32, seed=3)
    data = work / "data"
    data.mkdir(exist_ok=True)
    write_split(data / "train.csv", 96, seed=5)
    opts = TargetOptions(
        rows_per_block=16, batch_size=16, max_length=32, top_k=4, hidden_layers="last", progress=False, eval_split=None
    )
    (result,) = precompute(DataSpec(str(data)), [TeacherSpec("t", str(teacher))], work / "local", opts)
    return result.path


def files(group: Path) -> dict[str, bytes]:
    return {p.relative_to(group).as_posix(): p.read_bytes() for p in sorted(group.rglob("*")) if p.is_file()}


def watch(fs, prefix: str, sizes: dict[str, int], stop: threading.Event, seen: list[str]) -> None:
    """Poll the stored group until `stop`: a zarr.json next to a missing or short data file is a partial group."""
    while not stop.is_set():
        try:
            listing = {p[len(prefix) + 1 :]: info["size"] for p, info in fs.find(prefix, detail=True).items()}
        except FileNotFoundError:
            listing = {}
        if "zarr.json" in listing:
            bad = [rel for rel, size in sizes.items() if listing.get(rel) != size]
            if bad:
                seen.append(f"zarr.json visible while {len(bad)} files were not (e.g. {bad[0]})")
            return
        time.sleep(0.02)


def run_trial(trial: int, rng: random.Random, group: Path, proxy: FaultyProxy, store, work: Path) -> dict:
    from skdcache.cache.reader import TeacherCache
    from skdcache.cache.remote import RemoteRoot
    from skdcache.errors import CacheError

    proxy.rate = rate = rng.uniform(0.05, 0.35)
    before = Counter(proxy.injected)
    url = f"s3://{BUCKET}/trial-{trial}"
    fingerprint, key = group.parent.name, group.name
    prefix = f"{BUCKET}/trial-{trial}/{fingerprint}/{key}"
    local = files(group)
    sizes = {rel: len(data) for rel, data in local.items() if rel != "zarr.json"}
    out = {"trial": trial, "rate": round(rate, 3), "problems": [], "partial_visible": [], "data_lost": 0}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(store, prefix, sizes, stop, out["partial_visible"]), daemon=True)
    watcher.start()
    try:
        RemoteRoot(url, work / f"publisher-{trial}", retry_s=RETRY_S, timeout_s=TIMEOUT_S).publish(group)
        out["published"] = True
    except CacheError as exc:
        out["published"] = False
        out["gave_up"] = str(exc)
    finally:
        stop.set()
        watcher.join()
    if not out["published"]:
        out["data_lost"] += store.exists(f"{prefix}/zarr.json")  # a failed publish must stay invisible
        return _finish(out, proxy, before)
    for rel, data in local.items():  # what the server holds now must be the local group, byte for byte
        try:
            out["data_lost"] += store.cat_file(f"{prefix}/{rel}") != data
        except FileNotFoundError:
            out["data_lost"] += 1

    mirror = work / f"mirror-{trial}"
    out["interrupted"] = rng.random() < 0.5
    remote = RemoteRoot(url, mirror, retry_s=RETRY_S, timeout_s=TIMEOUT_S)
    try:
        if out["interrupted"]:
            _interrupted_fetch(remote, fingerprint, key, stop_after=rng.randint(1, len(sizes) // 2))
            partial = mirror / fingerprint / f".{key}.download"
            kept = {
                p.relative_to(partial).as_posix()
                for p in partial.rglob("*")
                if p.is_file() and p.stat().st_size == sizes.get(p.relative_to(partial).as_posix())
            }
            remote = RemoteRoot(url, mirror, retry_s=RETRY_S, timeout_s=TIMEOUT_S)
            fetched: list[str] = []
            original = remote._get
            remote._get = lambda r, lp, size: (fetched.append(r[len(prefix) + 1 :]), original(r, lp, size))[1]
            path = remote.fetch(fingerprint, key)
            out["kept_on_resume"] = len(kept)
            if kept & set(fetched):
                out["problems"].append(f"resume fetched {len(kept & set(fetched))} files it already had")
        else:
            path = remote.fetch(fingerprint, key)
    except CacheError as exc:
        out["mirror_gave_up"] = str(exc)
        return _finish(out, proxy, before)
    if files(path) != local:
        out["problems"].append("mirror differs from the local group")
    damage = TeacherCache(path).verify()
    if damage:
        out["problems"].append(f"verify: {damage[:3]}")
    shutil.rmtree(mirror, ignore_errors=True)
    return _finish(out, proxy, before)


def _interrupted_fetch(remote, fingerprint: str, key: str, stop_after: int) -> None:
    """A fetch that dies after `stop_after` files arrived (the others in flight may still land)."""
    original, done, lock = remote._get, [0], threading.Lock()

    def get(remote_path: str, local: Path, size: int | None) -> None:
        with lock:
            if done[0] >= stop_after:
                raise Interrupted()
        original(remote_path, local, size)
        with lock:
            done[0] += 1

    remote._get = get
    try:
        remote.fetch(fingerprint, key)
    except Interrupted:
        return
    raise AssertionError("the interrupted fetch completed")


def _finish(out: dict, proxy: FaultyProxy, before: Counter) -> dict:
    out["faults"] = dict(Counter(proxy.injected) - before)
    if out["partial_visible"]:
        out["problems"] += out["partial_visible"]
    return out


def fuzz(trials: int, seed: int, work: Path, log=print, group: Path | None = None) -> dict:
    """`trials` seeded publish+mirror rounds of `group` (by default a freshly computed one) through the proxy."""
    t0 = time.perf_counter()
    group = group or build_group(work)
    rng = random.Random(seed)
    results = []
    with moto_server() as endpoint, FaultyProxy(endpoint, rate=0.0, seed=seed, hold_s=HOLD_S) as proxy:
        with s3_environment(proxy.url):
            store = direct_fs(endpoint)
            store.mkdir(BUCKET)
            t_trials = time.perf_counter()
            for trial in range(trials):
                t = time.perf_counter()
                try:
                    result = run_trial(trial, rng, group, proxy, store, work)
                except Exception as exc:  # anything but the one-line CacheError is a failure
                    result = {"trial": trial, "problems": [f"{type(exc).__name__}: {exc}"], "data_lost": 0}
                    result["faults"] = {}
                result["seconds"] = round(time.perf_counter() - t, 2)
                results.append(result)
                log(
                    f"trial {trial}: rate={result.get('rate')} faults={sum(result['faults'].values())} "
                    f"published={result.get('published')} interrupted={result.get('interrupted')} "
                    f"problems={len(result['problems'])} lost={result['data_lost']} {result['seconds']} s"
                )
            requests = proxy.requests
            injected = {kind: proxy.injected[kind] for kind in KINDS}
    failures = [r for r in results if r["problems"]]
    return {
        "trials": trials,
        "seed": seed,
        "requests": requests,
        "faults_injected": injected,
        "faults_total": sum(injected.values()),
        "files_per_group": len(files(group)),
        "published": sum(bool(r.get("published")) for r in results),
        "publishes_gave_up": sum("gave_up" in r for r in results),
        "mirrors_gave_up": sum("mirror_gave_up" in r for r in results),
        "interrupted_mirrors_resumed": sum(bool(r.get("interrupted")) and "mirror_gave_up" not in r for r in results),
        "mirror_not_equal": sum(any("differs" in p for p in r["problems"]) for r in results),
        "verify_not_clean": sum(any(p.startswith("verify") for p in r["problems"]) for r in results),
        "partial_group_visible": sum(bool(r.get("partial_visible")) for r in results),
        "data_lost": sum(r["data_lost"] for r in results),
        "failures": failures,
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_trials": round(time.perf_counter() - t_trials, 1),
        "settings": {"retry_s": RETRY_S, "timeout_s": TIMEOUT_S, "hold_s": HOLD_S, "rate": [0.05, 0.35]},
        "per_trial": [{k: v for k, v in r.items() if k not in ("problems", "partial_visible")} for r in results],
    }


def main() -> None:
    run_campaign(
        __doc__,
        fuzz,
        "trials",
        100,
        "reliability-object-store.json",
        failed=lambda o: bool(o["failures"] or o["data_lost"]),
        hide=("failures", "per_trial"),
    )


if __name__ == "__main__":
    main()
