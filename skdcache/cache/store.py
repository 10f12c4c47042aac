"""Where cache bytes live: the cache root, durable atomic writes, and the one-writer lock.

Kept apart from `format.py` (what the bytes mean) in the way zarr keeps stores apart from codecs.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import suppress
from pathlib import Path

from skdcache.errors import CacheError, SkdError


def default_cache_root() -> Path:
    return Path(os.environ.get("SKDCACHE_HOME") or Path.home() / ".cache" / "skdcache").expanduser()


def ensure_writable_root(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SkdError(f"cache directory {root} is not writable ({exc.strerror}); pass another --cache") from exc
    return root


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` and the directories holding them (new entries must be durable too)."""
    if path.is_file():
        fsync_path(path)
        fsync_path(path.parent)
        return
    for dirpath, _, files in os.walk(path):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see all or nothing. A failed write
    (a full disk) removes its temp file: only a kill can leave one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read {path} ({type(exc).__name__}); run `skdcache verify` on this cache") from exc


class WriterLock:
    """An exclusive flock next to a teacher cache; the kernel drops it when the holder dies (even kill -9)."""

    def __init__(self, group_path: Path, wait: bool = False):
        self.path = group_path.parent / f".{group_path.name}.lock"
        self.wait = wait  # block until free (mirroring) instead of failing fast (a second precompute)
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CacheError(
                f"another process (pid {holder}) is writing {self.path.parent.name}/{self.path.name[1:-5]}; "
                f"wait for it to finish, it is the only writer of that teacher cache"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def remove_empty_tree(root: Path) -> None:
    """Remove `root` and the folders under it, where empty (a failed run's leftovers; files are kept)."""
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with suppress(OSError):
            path.rmdir()
    with suppress(OSError):
        root.rmdir()
