"""Write one teacher cache block by block: whole shards, durable bytes, then a completion marker."""

from __future__ import annotations

import errno
import functools
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from skdcache.cache import format as fmt
from skdcache.cache import idcoding, kinds
from skdcache.cache.manifest import MANIFEST_ATTR, Manifest, MetricInfo
from skdcache.cache.markers import BLOCKS_DIR, MARKER_NODE_ATTRS, checksum, completed_blocks, encode_marker, marker_path
from skdcache.cache.shards import chunk_codec, encode_shard
from skdcache.cache.store import atomic_write, fsync_path, fsync_tree
from skdcache.errors import CacheError
from skdcache.stages import StageClock


@functools.lru_cache(maxsize=1)
def encode_pool() -> ThreadPoolExecutor:
    """The threads that encode, write and fsync shards (Blosc, crc32c, write and fsync release the GIL);
    shared by every writer of the process. SKDCACHE_WRITE_THREADS overrides the count (default: the cores)."""
    workers = int(os.environ.get("SKDCACHE_WRITE_THREADS", 0)) or min(16, os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skdcache-encode")


class CacheWriter:
    """Creates (or reopens, to resume) a teacher cache group and writes blocks into it.

    Args:
        group_path: <root>/<dataset_fp>/<cache_key>.
        manifest: written as the group's attributes with state "writing".
        layout: arrays and block size from `format.plan_layout`.
        index: the (start, count) arrays of the token families, written with each block's rows.
        clock: where the encode / checksum / write / fsync seconds are added (a fresh one when not given).
    """

    def __init__(
        self,
        group_path: Path,
        manifest: Manifest,
        layout: fmt.Layout,
        index: dict[str, np.ndarray],
        clock: StageClock | None = None,
    ):
        self.path = group_path
        self.clock = clock or StageClock()
        self._codec = functools.partial(chunk_codec, fmt.compressors())
        self.layout = layout
        self.index = index
        self.manifest = manifest
        if (group_path / "zarr.json").exists():
            self.group = zarr.open_group(str(group_path), mode="r+")
            old = self.group.attrs.get(MANIFEST_ATTR, {})
            if old.get("layout") != layout.to_dict():
                if self.done():
                    raise CacheError(f"{group_path} holds a different layout; delete it to recompute")
                shutil.rmtree(group_path)  # a crash during creation: nothing was complete, start over
        if not (group_path / "zarr.json").exists():
            self.group = zarr.open_group(str(group_path), mode="w")
            for spec in layout.arrays.values():
                self.group.create_array(
                    spec.name,
                    shape=spec.shape,
                    dtype=spec.dtype,
                    chunks=spec.chunks,
                    shards=spec.shards,
                    compressors=fmt.compressors(),
                    fill_value=0,
                    # every written chunk exists on disk, so a missing one always means damage
                    config={"write_empty_chunks": True},
                )
            self.group.attrs[MANIFEST_ATTR] = manifest.to_dict()
            fsync_tree(group_path)
        if not (group_path / BLOCKS_DIR / "zarr.json").exists():  # also when resuming a cache made before it
            self.group.create_array(
                BLOCKS_DIR, shape=(0,), dtype="uint8", compressors=None, attributes=MARKER_NODE_ATTRS
            )
            fsync_tree(group_path / BLOCKS_DIR / "zarr.json")

    def done(self) -> set[int]:
        return completed_blocks(self.path)

    def _token_region(self, index_name: str, start: int, stop: int) -> tuple[int, int]:
        idx = self.index[index_name][start:stop]
        return int(idx[0, 0]), int(idx[-1, 0] + idx[-1, 1])

    def write_block(self, block: int, data: dict[str, np.ndarray]) -> None:
        """Write one block; a full disk becomes a one-line error (the block stays unmarked, a rerun resumes)."""
        try:
            self._write_block(block, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"disk full while writing block {block} to {self.path}; free space (or pass another --cache) "
                    f"and rerun: finished blocks are kept"
                ) from exc
            raise

    def _write_block(self, block: int, data: dict[str, np.ndarray]) -> None:
        """Write every array's slice of `block`, make it durable, then publish the marker.

        Each shard is encoded and written whole by the encode pool (many at once); the block's directories
        are fsynced once after all its files, then the marker is written: a crash at any point leaves either
        no marker or a block whose every byte is on disk.

        Args:
            data: row arrays as [rows_in_block, ...]; token arrays as [tokens_in_block, ...] in row order.
                Arrays already in their stored dtype are written without a copy; `data` is not modified.
        """
        start, stop = self.layout.block_rows(block)
        arrays = {**data, **{n: self.index[n][start:stop] for n in kinds.INDEX_ARRAYS if n in self.layout.arrays}}
        pool = encode_pool()
        sums: dict[str, Future] = {}
        jobs: list[Future] = []
        directories: set[Path] = set()
        for name, spec in self.layout.arrays.items():
            with self.clock.stage("encode"):  # the id / log-prob coding, when the array has one
                values = np.ascontiguousarray(idcoding.encode(spec.coding, np.asarray(arrays[name], dtype=spec.dtype)))
            lo, hi = self._region(name, start, stop)
            if values.shape[0] != hi - lo:
                raise CacheError(f"block {block} of {name}: {values.shape[0]} rows for a region of {hi - lo}")
            sums[name] = pool.submit(self._checksum, values)
            if hi == lo:
                continue
            if lo % spec.shard_rows:
                raise CacheError(f"block {block} of {name} starts inside shard {lo // spec.shard_rows}")
            for shard in fmt.shards_of(lo, hi, spec.shard_rows):
                part = values[shard * spec.shard_rows - lo : min(hi, (shard + 1) * spec.shard_rows) - lo]
                path = fmt.shard_file(self.path / name, shard, len(spec.shape))
                jobs.append(pool.submit(self._write_shard, path, part, spec))
                directories.update(p for p in path.parents if p.is_relative_to(self.path / name))
        for job in jobs:
            job.result()
        with self.clock.stage("fsync"):
            for directory in sorted(directories, key=lambda p: -len(p.parts)):  # new entries, deepest first
                fsync_path(directory)
        marker = encode_marker(block, (start, stop), {name: f.result() for name, f in sums.items()})
        with self.clock.stage("fsync"):
            atomic_write(marker_path(self.path, block), marker)

    def _checksum(self, values: np.ndarray) -> str:
        with self.clock.stage("checksum"):
            return checksum(values)

    def _write_shard(self, path: Path, values: np.ndarray, spec: fmt.ArraySpec) -> None:
        """Encode one shard (zarr's exact bytes), write it in one call and fsync it."""
        with self.clock.stage("encode"):
            blob = encode_shard(values, spec.chunk_rows, spec.shard_rows, self._codec(values.dtype.itemsize))
        with self.clock.stage("write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                with self.clock.stage("fsync"):
                    os.fsync(fd)
            finally:
                os.close(fd)

    def invalidate(self, block: int) -> None:
        """Forget a damaged block: its marker first (readers stop serving it), then its shard files."""
        marker_path(self.path, block).unlink(missing_ok=True)
        start, stop = self.layout.block_rows(block)
        for name, spec in self.layout.arrays.items():
            for path in self._shard_files(name, spec, *self._region(name, start, stop)):
                path.unlink(missing_ok=True)
        self.group.attrs[MANIFEST_ATTR] = {**self.manifest.to_dict(), "state": "writing"}

    def _region(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """Rows [lo, hi) of array `name` that block rows [start, stop) own."""
        index = fmt.index_array(name, self.layout.arrays)
        return (start, stop) if index is None else self._token_region(index, start, stop)

    def _shard_files(self, name: str, spec: fmt.ArraySpec, lo: int, hi: int) -> list[Path]:
        if hi == lo:  # a block without rows here owns no shard (`shards_of` names the next block's first one)
            return []
        return [fmt.shard_file(self.path / name, s, len(spec.shape)) for s in fmt.shards_of(lo, hi, spec.shard_rows)]

    def finish(self, metric: MetricInfo | dict | None) -> Manifest:
        missing = set(range(self.layout.n_blocks)) - self.done()
        if missing:
            raise CacheError(f"{self.path}: blocks {sorted(missing)[:5]} missing; rerun precompute to finish")
        self.manifest = self.manifest.completed(metric, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.group.attrs[MANIFEST_ATTR] = self.manifest.to_dict()
        fsync_tree(self.path / "zarr.json")
        return self.manifest
