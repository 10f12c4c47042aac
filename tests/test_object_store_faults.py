"""Cache roots on a failing object store: moto's S3 server behind a proxy that injects resets, 500/503 answers,
stalls and cut bodies (benchmarks/reliability/faulty_s3.py). The full campaign is object_store_faults.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.reliability import faulty_s3, object_store_faults
from skdcache.cache.reader import TeacherCache
from skdcache.cache.remote import RemoteRoot
from skdcache.errors import CacheError

pytestmark = pytest.mark.usefixtures("one_thread")
BUCKET = "faulty"
FAST = dict(retry_s=30.0, timeout_s=1.0)  # a stall costs one read timeout; ~11 tries outlast any bad streak


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> Path:
    """One complete local teacher group of 6 blocks (about 50 files)."""
    return object_store_faults.build_group(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def s3():
    """moto behind the faulty proxy (no faults until a test sets `proxy.rate`); counts faults across the module."""
    with faulty_s3.moto_server() as endpoint, faulty_s3.FaultyProxy(endpoint, rate=0.0, seed=7, hold_s=5) as proxy:
        with faulty_s3.s3_environment(proxy.url):
            store = faulty_s3.direct_fs(endpoint)
            store.mkdir(BUCKET)
            yield proxy, store, endpoint


@pytest.fixture
def proxy(s3):
    yield s3[0]
    s3[0].rate = 0.0


def _files(group: Path) -> dict[str, bytes]:
    return object_store_faults.files(group)


def _check_mirror(path: Path, group: Path) -> None:
    assert _files(path) == _files(group)  # byte for byte, no file more or less
    assert TeacherCache(path).verify() == []


def test_publish_and_mirror_through_every_kind_of_fault(group, s3, proxy, tmp_path):
    """Until every fault kind has hit (at least one publish and mirror), each round must still be exact."""
    fp, key = group.parent.name, group.name
    before = Counter(proxy.injected)
    for round in range(6):  # at 0.2, 11 failures in a row (a CI flake) has odds of 2e-8 per operation
        proxy.rate = 0.2
        url = f"s3://{BUCKET}/every-{round}"
        RemoteRoot(url, tmp_path / "pub", **FAST).publish(group)
        path = RemoteRoot(url, tmp_path / f"mirror-{round}", **FAST).fetch(fp, key)
        _check_mirror(path, group)
        if all((proxy.injected - before)[kind] for kind in faulty_s3.KINDS):
            break
    assert all((proxy.injected - before)[kind] for kind in faulty_s3.KINDS), proxy.injected - before


def test_a_server_that_always_fails_ends_in_one_line_naming_the_url(group, s3, proxy, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/down"
    proxy.rate = 1.0
    t0 = time.monotonic()
    with pytest.raises(CacheError) as caught:
        RemoteRoot(url, tmp_path / "m", retry_s=2.0, timeout_s=0.5).manifests()
    assert time.monotonic() - t0 < 2.0 + 2 * 0.5 + 3  # the budget, one stalled attempt, slack for a loaded machine
    message = str(caught.value)
    assert url in message and "\n" not in message and "SKDCACHE_REMOTE_RETRY_S" in message

    env = {"SKDCACHE_REMOTE_RETRY_S": "2", "SKDCACHE_REMOTE_TIMEOUT_S": "0.5", "SKDCACHE_MIRROR": str(tmp_path)}
    monkeypatch.setattr(proxy, "kinds", ("http_503", "reset"))  # timeouts were timed above; keep the CLI quick
    done = subprocess.run(
        [sys.executable, "-m", "skdcache", "ls", "--cache", url],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_interrupted_mirror_resumes_and_fetches_only_what_is_missing(group, s3, proxy, tmp_path):
    fp, key = group.parent.name, group.name
    url = f"s3://{BUCKET}/resume"
    RemoteRoot(url, tmp_path / "pub", **FAST).publish(group)
    remote = RemoteRoot(url, tmp_path / "mirror", **FAST)
    object_store_faults._interrupted_fetch(remote, fp, key, stop_after=10)
    partial = tmp_path / "mirror" / fp / f".{key}.download"
    assert not (tmp_path / "mirror" / fp / key).exists()  # nothing served
    have = sorted(p for p in partial.rglob("*") if p.is_file())
    assert 10 <= len(have) < len(_files(group)) - 1
    have[0].write_bytes(have[0].read_bytes()[:-3])  # a file cut by the kill

    proxy.rate = 0.2  # and the network is bad while resuming
    remote = RemoteRoot(url, tmp_path / "mirror", **FAST)
    fetched, original = [], remote._get
    remote._get = lambda r, local, size: (fetched.append(local), original(r, local, size))[1]
    path = remote.fetch(fp, key)
    _check_mirror(path, group)
    expected = {partial / rel for rel in _files(group) if rel != "zarr.json"} - set(have[1:])
    assert set(fetched) == expected  # the missing files and the cut one, nothing already there


def test_a_damaged_partial_download_is_not_served(group, s3, proxy, tmp_path, caplog):
    """Same size, wrong bytes (no size check can see it): the group's checksums do, and it is fetched again."""
    fp, key = group.parent.name, group.name
    url = f"s3://{BUCKET}/damaged"
    RemoteRoot(url, tmp_path / "pub", **FAST).publish(group)
    partial = tmp_path / "mirror" / fp / f".{key}.download"
    for rel, data in _files(group).items():
        if rel != "zarr.json":
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            (partial / rel).write_bytes(data)
    shard = max(
        (p for p in partial.rglob("*") if p.is_file() and "/c/" in p.as_posix()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="skdcache"):
        path = RemoteRoot(url, tmp_path / "mirror", **FAST).fetch(fp, key)
    assert "is damaged" in caplog.text  # found by the block checksums, then downloaded again
    _check_mirror(path, group)


def test_two_publishers_racing_on_one_key_leave_a_correct_group(group, s3, proxy, tmp_path):
    fp, key = group.parent.name, group.name
    url = f"s3://{BUCKET}/race"
    proxy.rate = 0.05
    errors: list[BaseException] = []

    def publish(i: int) -> None:
        try:
            RemoteRoot(url, tmp_path / f"pub-{i}", **FAST).publish(group)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (published,) = RemoteRoot(url, tmp_path / "m", **FAST).manifests()
    assert published[2].cache_key == key
    _check_mirror(RemoteRoot(url, tmp_path / "m", **FAST).fetch(fp, key), group)


def test_a_reader_during_a_publish_sees_no_group_or_a_complete_one(group, s3, proxy, tmp_path):
    store, fp, key = s3[1], group.parent.name, group.name
    url = f"s3://{BUCKET}/reader"
    sizes = {rel: len(data) for rel, data in _files(group).items() if rel != "zarr.json"}
    partial_seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(  # the stored objects, past the proxy, polled the whole time
        target=object_store_faults.watch, args=(store, f"{BUCKET}/reader/{fp}/{key}", sizes, stop, partial_seen)
    )
    watcher.start()
    proxy.rate = 0.15
    publisher = threading.Thread(target=RemoteRoot(url, tmp_path / "pub", **FAST).publish, args=(group,))
    publisher.start()
    reader = RemoteRoot(url, tmp_path / "mirror", **FAST)
    absent = 0
    while publisher.is_alive():
        if reader.has_complete(fp, key) is None:
            absent += 1
        else:
            _check_mirror(reader.fetch(fp, key), group)  # visible means whole
            break
        time.sleep(0.05)
    publisher.join()
    stop.set()
    watcher.join()
    assert absent >= 1 and partial_seen == []
    _check_mirror(reader.fetch(fp, key), group)


def test_object_store_campaign_small(group, tmp_path):
    """Two seeded trials of the campaign (the full run: benchmarks/reliability/object_store_faults.py)."""
    out = object_store_faults.fuzz(trials=2, seed=3, work=tmp_path, log=lambda *a: None, group=group)
    assert out["failures"] == [], out["failures"]
    assert out["data_lost"] == out["partial_group_visible"] == 0
    assert out["published"] == 2 and out["faults_total"] > 0
