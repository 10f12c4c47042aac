"""Where cache bytes live: the root, atomic writes (all or nothing, no leftovers), JSON records, the one-writer
lock and the clean-up of a failed run's empty folders."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from skdcache.cache import store
from skdcache.cache.store import (
    WriterLock,
    atomic_write,
    default_cache_root,
    ensure_writable_root,
    fsync_tree,
    read_json,
    remove_empty_tree,
    write_json,
)
from skdcache.errors import CacheError, SkdError


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_default_cache_root(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("SKDCACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x"
    monkeypatch.setenv("SKDCACHE_HOME", "~/y")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / "y"
    monkeypatch.setenv("SKDCACHE_HOME", "")  # set but empty: the default
    assert default_cache_root() == tmp_path / "home" / ".cache" / "skdcache"
    monkeypatch.delenv("SKDCACHE_HOME")
    assert default_cache_root() == tmp_path / "home" / ".cache" / "skdcache"


def test_ensure_writable_root_creates_it_and_leaves_no_probe(tmp_path: Path):
    root = tmp_path / "a" / "b"
    assert ensure_writable_root(root) == root
    assert root.is_dir() and listing(root) == []
    assert ensure_writable_root(root) == root  # existing: fine


def test_an_unwritable_root_is_one_line_naming_the_flag(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SkdError) as info:
        ensure_writable_root(blocker / "cache")  # a file where a folder must go (root ignores chmod)
    msg = str(info.value)
    assert "\n" not in msg and str(blocker / "cache") in msg and "pass another --cache" in msg


def test_atomic_write_writes_replaces_and_leaves_nothing_else(tmp_path: Path):
    path = tmp_path / "new" / "dir" / "f.bin"
    atomic_write(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write(path, b"second, longer")
    atomic_write(path, b"3")  # shorter than what it replaces: no stale tail
    assert path.read_bytes() == b"3"
    assert listing(tmp_path / "new") == ["dir", "dir/f.bin"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path, monkeypatch, failing: str):
    """A full disk (or any error) while writing: readers still see the old bytes, and no temp file is left
    behind to fill the disk further or be mistaken for data."""
    path = tmp_path / "state.pt"
    atomic_write(path, b"old")

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "write":
        real_open = open

        class Torn:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                fail()

        monkeypatch.setattr(store, "open", lambda *a, **k: Torn(real_open(*a, **k)), raising=False)
    else:
        monkeypatch.setattr(store.os, failing, fail)
    with pytest.raises(OSError) as info:
        atomic_write(path, b"new bytes")
    assert info.value.errno == errno.ENOSPC  # the error itself reaches the caller
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["state.pt"]


def test_write_json_and_read_json(tmp_path: Path):
    path = tmp_path / "d" / "x.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys: stable bytes
    assert read_json(path) == {"a": [1, 2], "b": 1}
    assert listing(tmp_path / "d") == ["x.json"]


@pytest.mark.parametrize("content", [None, "", '{"a": ', "\x00\x01"])
def test_read_json_refuses_missing_or_damaged_files_in_one_line(tmp_path: Path, content: str | None):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CacheError) as info:
        read_json(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "skdcache verify" in msg


def test_the_writer_lock_refuses_a_second_holder(tmp_path: Path):
    group = tmp_path / "fp" / "key"
    with WriterLock(group) as lock:
        assert lock.path == tmp_path / "fp" / ".key.lock"
        assert lock.path.read_text() == str(os.getpid())  # the holder, for the refusal message
        with pytest.raises(CacheError) as info:
            WriterLock(group).__enter__()  # another open file: flock refuses it even in this process
        msg = str(info.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and "fp/key" in msg
        with WriterLock(tmp_path / "fp" / "other"):  # another group: its own lock
            pass
    with WriterLock(group):  # released on exit: the next writer gets it
        pass
    assert not group.exists()  # the lock sits next to the group, it creates nothing else


def test_a_waiting_writer_lock_gets_the_lock_once_it_is_released(tmp_path: Path):
    group = tmp_path / "key"
    got = threading.Event()

    def waiter():
        with WriterLock(group, wait=True):
            got.set()

    holder = WriterLock(group).__enter__()
    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert not got.wait(0.2)  # still held: the waiter blocks instead of failing
    holder.__exit__(None, None, None)
    assert got.wait(30)
    thread.join(30)
    holder.__exit__(None, None, None)  # a second exit is harmless


def test_the_writer_lock_is_released_when_its_holder_dies(tmp_path: Path):
    """flock belongs to the open file: a holder that exits without unlocking (kill -9) frees it."""
    group = tmp_path / "key"
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        try:
            WriterLock(group).__enter__()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert (tmp_path / ".key.lock").read_text() == str(pid)  # the child did hold it
    with WriterLock(group):
        pass


def test_fsync_tree_syncs_every_file_and_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "g" / "a" / "b").mkdir(parents=True)
    for rel in ("g/zarr.json", "g/a/x", "g/a/b/y"):
        (tmp_path / rel).write_text("x")
    synced: list[Path] = []
    real = store.fsync_path
    monkeypatch.setattr(store, "fsync_path", lambda p: (synced.append(Path(p)), real(p)))
    fsync_tree(tmp_path / "g")
    expected = {tmp_path / r for r in ("g", "g/a", "g/a/b", "g/zarr.json", "g/a/x", "g/a/b/y")}
    assert set(synced) == expected and len(synced) == len(expected)
    synced.clear()
    fsync_tree(tmp_path / "g" / "a" / "x")  # one file: the file and the folder holding its entry
    assert synced == [tmp_path / "g" / "a" / "x", tmp_path / "g" / "a"]


def test_remove_empty_tree_keeps_files(tmp_path: Path):
    root = tmp_path / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "keep.txt").write_text("x")
    remove_empty_tree(root)
    assert listing(root) == ["d", "d/keep.txt"]
    (root / "d" / "keep.txt").unlink()
    remove_empty_tree(root)
    assert not root.exists()
    remove_empty_tree(root)  # gone already: nothing to do


def test_json_written_is_plain_json(tmp_path: Path):
    write_json(tmp_path / "x.json", {"n": 1.5, "s": "é"})
    assert json.loads((tmp_path / "x.json").read_bytes()) == {"n": 1.5, "s": "é"}
