"""Random row reads from local sharded Zarr v3 arrays without zarr's per-chunk overhead.

zarr 3.1 reads a sharded array one inner chunk at a time, re-reading the shard index for each (about 1 ms
per chunk here), so a random batch of 32 rows costs ~35 ms whatever the row size. Training reads random
batches all the time, so for local caches this module reads the same bytes directly: the shard index
(standard zarr v3 layout: `n_chunks` (offset, nbytes) uint64 pairs + crc32c, at the end of the shard file) is
read once per shard and kept, and each needed inner chunk is one `pread`, a crc32c check, one Blosc decode.
Arrays written by anything other than our layout (a codec chain we do not recognise) fall back to zarr.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import google_crc32c
import numpy as np

from skdcache.cache.format import shard_file
from skdcache.errors import CacheError

_EMPTY = np.uint64(2**64 - 1)


def read_shard_index(path: Path, per_shard: int, fd: int | None = None) -> np.ndarray | None:
    """The (offset, nbytes) pairs [per_shard, 2] at the end of a shard file, checked: crc32c, and every
    stored chunk inside the file's data area. None when the file does not exist.

    Checked before any reader (ours or zarr's) follows it: a forged index with a valid checksum could
    otherwise make a reader allocate `nbytes` (up to 2^64) or decode another chunk's bytes.
    """
    own = fd is None
    try:
        fd = os.open(path, os.O_RDONLY) if own else fd
    except FileNotFoundError:
        return None
    try:
        size = per_shard * 16 + 4
        file_size = os.fstat(fd).st_size
        raw = os.pread(fd, size, max(0, file_size - size))
    finally:
        if own:
            os.close(fd)
    if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise _damaged(f"shard {path} is damaged (truncated or bad index)")
    index = np.frombuffer(raw[:-4], dtype="<u8").reshape(per_shard, 2)
    stored = index[index[:, 0] != _EMPTY]
    data_end = file_size - size
    if (stored[:, 1] < 4).any() or (stored[:, 0] > data_end).any() or (stored[:, 1] > data_end - stored[:, 0]).any():
        raise _damaged(f"shard {path} has an index pointing outside its data")
    stored = stored[np.argsort(stored[:, 0])]
    if (stored[1:, 0] < stored[:-1, 0] + stored[:-1, 1]).any():
        raise _damaged(f"shard {path} has an index with overlapping chunks")
    return index


def _damaged(what: str) -> CacheError:
    return CacheError(f"{what}; run `skdcache verify` and `skdcache precompute --repair`")


def checked_slice(array, array_dir: Path, lo: int, hi: int) -> np.ndarray:
    """`array[lo:hi]` through zarr, after checking the index of every shard it touches (see read_shard_index)."""
    shard_rows = (array.shards or array.chunks)[0]
    per_shard = shard_rows // array.chunks[0]
    for shard in range(lo // shard_rows, max(lo, hi - 1) // shard_rows + 1):
        read_shard_index(shard_file(array_dir, shard, array.ndim), per_shard)
    return array[lo:hi]


def open_files_budget() -> int:
    """Shard files one array may keep open: random batches touch a shard per row, so a budget below the shard
    count reopens a file (open, fstat, close) for almost every row of a large cache. A sixteenth of the
    process's descriptor limit leaves room for loader workers x teachers x arrays; 1,024 shards are 1M rows."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(1024, soft // 16)) if soft != resource.RLIM_INFINITY else 1024


class ShardedRows:
    """Row reads along axis 0 of one local array written as `format.plan_layout` describes."""

    def __init__(self, array_dir: Path, array, max_open_files: int | None = None):
        from numcodecs import Blosc
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

        codecs = array.metadata.codecs
        sharding = codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None
        inner = sharding.codecs if sharding else ()
        if not (
            sharding
            and str(sharding.index_location.value) == "end"
            and len(inner) == 3
            and isinstance(inner[0], BytesCodec)
            and isinstance(inner[1], BloscCodec)
            and isinstance(inner[2], Crc32cCodec)
            and array.metadata.chunk_key_encoding.separator == "/"
        ):
            raise ValueError("unsupported codec chain")
        self.dir = array_dir
        self.shape = array.shape
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.chunk_rows = sharding.chunk_shape[0]
        self.shard_rows = array.metadata.chunk_grid.chunk_shape[0]
        self.per_shard = self.shard_rows // self.chunk_rows
        self.tail = tuple(array.shape[1:])
        self._blosc = Blosc()
        self._index: dict[int, np.ndarray] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._max_open = max_open_files or open_files_budget()

    def _shard_path(self, shard: int) -> Path:
        return shard_file(self.dir, shard, 1 + len(self.tail))

    def _fd(self, shard: int) -> int | None:
        if shard in self._fds:
            self._fds.move_to_end(shard)
            return self._fds[shard]
        try:
            fd = os.open(self._shard_path(shard), os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._fds[shard] = fd
        if len(self._fds) > self._max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _shard_index(self, shard: int, fd: int) -> np.ndarray:
        if shard not in self._index:
            self._index[shard] = read_shard_index(self._shard_path(shard), self.per_shard, fd)
        return self._index[shard]

    def _chunk(self, chunk: int) -> np.ndarray:
        """One inner chunk. Reads only ever target written rows, and the writer stores every chunk it
        writes (empty ones too), so a missing shard or chunk is damage, never "fill value"."""
        shard, local = divmod(chunk, self.per_shard)
        fd = self._fd(shard)
        if fd is None:
            raise CacheError(
                f"shard {self._shard_path(shard)} is missing; run `skdcache verify` and `skdcache precompute --repair`"
            )
        offset, nbytes = self._shard_index(shard, fd)[local]
        if offset == _EMPTY:
            raise CacheError(f"{self.dir.name} chunk {chunk} is missing from its shard; run `skdcache verify`")
        raw = os.pread(fd, int(nbytes), int(offset))
        if len(raw) != nbytes or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise CacheError(
                f"{self.dir.name} chunk {chunk} in {self._shard_path(shard)} is damaged (checksum mismatch); "
                f"run `skdcache verify` and `skdcache precompute --repair`"
            )
        data = self._blosc.decode(raw[:-4])
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunk_rows, *self.tail)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted or not, unique or not) as one array [len(rows), *tail]."""
        out = np.empty((len(rows), *self.tail), dtype=self.dtype)
        chunks = rows // self.chunk_rows
        order = np.argsort(chunks, kind="stable")
        bounds = np.flatnonzero(np.diff(chunks[order])) + 1
        for group in np.split(order, bounds):
            if group.size == 0:
                continue
            values = self._chunk(int(chunks[group[0]]))
            out[group] = values[rows[group] % self.chunk_rows]
        return out

    def close(self) -> None:
        fds = getattr(self, "_fds", {})  # __init__ may have refused the array before opening anything
        for fd in fds.values():
            os.close(fd)
        fds.clear()

    def __del__(self) -> None:
        self.close()


class InMemory:
    """A small array read whole; rows of a shard that is missing or fails to decode are refused, not served."""

    def __init__(self, name: str, array, directory: Path):
        self.name = name
        step = array.shards[0] if array.shards else array.chunks[0]
        # zarr reads a missing shard as fill values; ours are all written, so missing means lost
        present = [shard_file(directory, s, array.ndim).exists() for s in range(-(-array.shape[0] // step))]
        self.damaged = np.repeat(~np.array(present, dtype=bool), step)[: array.shape[0]]
        if all(present):
            try:  # one call after checking every shard index: zarr then fetches the shards concurrently
                self.values = checked_slice(array, directory, 0, array.shape[0])  # (1M rows: ~1,000 shards)
                return
            except Exception:  # a shard fails its index check or to decode: find which, shard by shard
                pass
        self.values = np.zeros(array.shape, dtype=array.dtype)
        for lo in range(0, array.shape[0], step):
            try:
                self.values[lo : lo + step] = checked_slice(array, directory, lo, min(lo + step, array.shape[0]))
            except Exception:  # CacheError for a bad shard index, zarr's ValueError for checksum/decode failures
                self.damaged[lo : lo + step] = True

    def rows(self, rows: np.ndarray) -> np.ndarray:
        if self.damaged[rows].any():
            raise CacheError(
                f"array {self.name} is damaged at rows {rows[self.damaged[rows]][:3].tolist()}; "
                f"run `skdcache verify` and `skdcache precompute --repair`"
            )
        return self.values[rows]
