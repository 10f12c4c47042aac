"""Encode one shard file of a cache array, byte for byte as zarr's sharding codec writes it.

Why not `zarr_array[lo:hi] = values`: zarr encodes chunk by chunk through its event loop, which caps a
block's compression at a fraction of one core. Here a shard is plain bytes built from numpy in one call, so
the writer encodes many shards at once in threads (Blosc and crc32c release the GIL) and writes each file
with one call. The layout is zarr v3's: each inner chunk is the C-order little-endian bytes of the chunk
(padded with the fill value 0), Blosc-compressed, then followed by its crc32c; the chunks follow one
another in order; the shard index ([chunks_per_shard, 2] uint64 offset/length pairs, 2**64 - 1 for a chunk
never written, then its own crc32c) closes the file. `tests/cache/test_shards.py` checks the bytes against
zarr's own writer, so plain zarr (and every reader of this project) reads what this writes.
"""

from __future__ import annotations

import functools

import google_crc32c
import numpy as np
from numcodecs import Blosc

_EMPTY = np.uint64(2**64 - 1)
_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def _crc32c(data: bytes | memoryview) -> bytes:
    return google_crc32c.value(data).to_bytes(4, "little")


@functools.lru_cache(maxsize=32)
def _blosc(cname: str, clevel: int, shuffle: str, blocksize: int, typesize: int) -> Blosc:
    return Blosc(cname=cname, clevel=clevel, shuffle=_SHUFFLE[shuffle], blocksize=blocksize, typesize=typesize)


def chunk_codec(compressors: tuple, itemsize: int):
    """The numcodecs Blosc that zarr would use for `compressors` (format.compressors()) on this item size.

    Only the codec chain the format writes (Blosc, then crc32c) is supported: anything else must go through
    zarr itself, so a future format change cannot silently write bytes zarr would not.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    kinds = tuple(type(c) for c in compressors)
    if kinds != (BloscCodec, Crc32cCodec):
        raise NotImplementedError(f"shard encoder supports Blosc + crc32c only, not {compressors}")
    b = compressors[0]
    return _blosc(b.cname.value, b.clevel, b.shuffle.value, b.blocksize, itemsize)


def encode_shard(values: np.ndarray, chunk_rows: int, shard_rows: int, blosc: Blosc) -> bytes:
    """The bytes of one shard file holding `values` from its first row on.

    Args:
        values: [m, ...] with m <= shard_rows, already in the stored dtype; chunks past row m stay unwritten
            (zarr stores no chunk it never wrote), the chunk holding row m - 1 is padded with zeros.
        chunk_rows, shard_rows: the array's inner chunk and shard lengths along axis 0.
    """
    m = values.shape[0]
    n_chunks = -(-m // chunk_rows)
    padded = values
    if n_chunks * chunk_rows != m:  # the last chunk is stored whole, padded with the fill value
        padded = np.zeros((n_chunks * chunk_rows, *values.shape[1:]), dtype=values.dtype)
        padded[:m] = values
    padded = np.ascontiguousarray(padded.astype(padded.dtype.newbyteorder("<"), copy=False))
    index = np.full((shard_rows // chunk_rows, *([1] * (values.ndim - 1)), 2), _EMPTY, dtype="<u8")
    flat = index.reshape(-1, 2)
    parts: list[bytes] = []
    offset = 0
    for c in range(n_chunks):
        body = blosc.encode(padded[c * chunk_rows : (c + 1) * chunk_rows])
        parts += [body, _crc32c(body)]
        flat[c] = (offset, len(body) + 4)
        offset += len(body) + 4
    index_bytes = index.tobytes()
    parts += [index_bytes, _crc32c(index_bytes)]
    return b"".join(parts)
