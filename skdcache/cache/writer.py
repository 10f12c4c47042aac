"""Write one teacher cache block by block: whole shards, durable bytes, then a completion marker."""

from __future__ import annotations

import errno
import shutil
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from skdcache.cache import format as fmt
from skdcache.cache.store import atomic_write, fsync_tree, read_json
from skdcache.errors import CacheError


def checksum(data: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1)):08x}"


def completed_blocks(group_path: Path) -> set[int]:
    marker_dir = group_path / fmt.BLOCKS_DIR
    if not marker_dir.is_dir():
        return set()
    return {int(p.stem) for p in marker_dir.glob("*.json") if p.stem.isdigit()}


class CacheWriter:
    """Creates (or reopens, to resume) a teacher cache group and writes blocks into it.

    Args:
        group_path: <root>/<dataset_fp>/<cache_key>.
        manifest: written as the group's attributes with state "writing".
        layout: arrays and block size from `format.plan_layout`.
        index: the (start, count) arrays of the token families, written with each block's rows.
    """

    def __init__(self, group_path: Path, manifest: fmt.Manifest, layout: fmt.Layout, index: dict[str, np.ndarray]):
        self.path = group_path
        self.layout = layout
        self.index = index
        self.manifest = manifest
        if (group_path / "zarr.json").exists():
            self.group = zarr.open_group(str(group_path), mode="r+")
            old = self.group.attrs.get(fmt.MANIFEST_ATTR, {})
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
            self.group.attrs[fmt.MANIFEST_ATTR] = manifest.to_dict()
            fsync_tree(group_path)

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
        """Write every array's slice of `block`, fsync it, then publish the marker.

        Args:
            data: row arrays as [rows_in_block, ...]; token arrays as [tokens_in_block, ...] in row order.
        """
        start, stop = self.layout.block_rows(block)
        for name in ("token_index", "hidden_index"):
            if name in self.layout.arrays:
                data[name] = self.index[name][start:stop]
        sums: dict[str, str] = {}
        touched: list[Path] = []
        for name, spec in self.layout.arrays.items():
            values = np.asarray(data[name], dtype=spec.dtype)
            family = self._family(name)
            if family is None:
                lo, hi = start, stop
            else:
                lo, hi = self._token_region(family, start, stop)
            if values.shape[0] != hi - lo:
                raise CacheError(f"block {block} of {name}: {values.shape[0]} rows for a region of {hi - lo}")
            if hi > lo:
                self.group[name][lo:hi] = values
            sums[name] = checksum(values)
            touched += self._shard_files(name, spec, lo, hi)
        for path in touched:
            if path.exists():
                fsync_tree(path)
        atomic_write(self.path / fmt.block_marker_name(block), fmt.encode_marker(block, (start, stop), sums))

    def invalidate(self, block: int) -> None:
        """Forget a damaged block: its marker first (readers stop serving it), then its shard files."""
        (self.path / fmt.block_marker_name(block)).unlink(missing_ok=True)
        start, stop = self.layout.block_rows(block)
        for name, spec in self.layout.arrays.items():
            family = self._family(name)
            lo, hi = (start, stop) if family is None else self._token_region(family, start, stop)
            for path in self._shard_files(name, spec, lo, hi):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        self.group.attrs[fmt.MANIFEST_ATTR] = {**self.manifest.to_dict(), "state": "writing"}

    def _family(self, name: str) -> str | None:
        if name in ("topk_logprobs", "topk_ids", "tail_logmass", "positions"):
            return "token_index"
        if name == "hidden" and "hidden_index" in self.layout.arrays:
            return "hidden_index"
        return None

    def _shard_files(self, name: str, spec: fmt.ArraySpec, lo: int, hi: int) -> list[Path]:
        first, last = lo // spec.shard_rows, max(lo, hi - 1) // spec.shard_rows
        return [self.path / name / "c" / str(s) for s in range(first, last + 1)]

    def finish(self, metric: dict | None) -> fmt.Manifest:
        missing = set(range(self.layout.n_blocks)) - self.done()
        if missing:
            raise CacheError(f"{self.path}: blocks {sorted(missing)[:5]} missing; rerun precompute to finish")
        m = self.manifest
        m.metric, m.state = metric, "complete"
        m.completed_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.group.attrs[fmt.MANIFEST_ATTR] = m.to_dict()
        fsync_tree(self.path / "zarr.json")
        return m


def read_manifest(group_path: Path) -> fmt.Manifest:
    meta = read_json(group_path / "zarr.json")
    attrs = meta.get("attributes", {}).get(fmt.MANIFEST_ATTR)
    if attrs is None:
        raise CacheError(f"{group_path} is not an skdcache teacher cache (no '{fmt.MANIFEST_ATTR}' attribute)")
    version = attrs.get("format_version")
    if version != fmt.FORMAT_VERSION:
        raise CacheError(
            f"{group_path} was written by cache format v{version}, this skdcache reads v{fmt.FORMAT_VERSION}; "
            f"recompute it with this version (or install the skdcache that wrote it)"
        )
    return fmt.Manifest.from_dict(attrs)
