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
            size = self.per_shard * 16 + 4
            raw = os.pread(fd, size, max(0, os.fstat(fd).st_size - size))
            if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise CacheError(
                    f"shard {self._shard_path(shard)} is damaged (truncated or bad index); "
                    f"run `skdcache verify` and `skdcache precompute --repair`"
                )
            self._index[shard] = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard, 2)
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
