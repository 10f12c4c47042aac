"""The shard encoder writes exactly the bytes zarr's own writer does, so plain zarr reads every cache."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache.shards import chunk_codec, encode_shard

CASES = [  # dtype, trailing shape, chunk_rows, shard_rows, array rows, region [lo, hi)
    ("float16", (3,), 256, 1024, 4000, (0, 1024)),  # a whole row shard
    ("float16", (3,), 256, 1024, 4000, (3072, 4000)),  # the array's last, shorter shard
    ("float16", (32,), 64, 4096, 9000, (4096, 6001)),  # a token region ending mid-chunk
    ("uint16", (32,), 64, 4096, 9000, (8192, 9000)),
    ("uint8", (20,), 128, 8192, 8200, (0, 5)),  # one partial chunk
    ("float16", (), 512, 32768, 40000, (32768, 40000)),
    ("int64", (2,), 1024, 1024, 3000, (2048, 3000)),
    ("float16", (3, 16), 8, 512, 1500, (512, 1024)),  # hidden states [n, L, H]
    ("uint32", (8,), 16, 1024, 1024, (0, 1)),
]


@pytest.mark.parametrize(("dtype", "tail", "chunk", "shard", "n", "region"), CASES)
def test_shard_bytes_equal_zarrs(tmp_path, dtype, tail, chunk, shard, n, region):
    rng = np.random.default_rng(7)
    lo, hi = region
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    values = (
        rng.integers(0, info.max, (hi - lo, *tail), endpoint=True, dtype=dtype)
        if info
        else rng.standard_normal((hi - lo, *tail)).astype(dtype)
    )
    values[: len(values) // 3] = 0  # all-zero chunks are still stored (write_empty_chunks)
    arr = zarr.open_group(str(tmp_path / "g"), mode="w").create_array(
        "a",
        shape=(n, *tail),
        dtype=dtype,
        chunks=(chunk, *tail),
        shards=(shard, *tail),
        compressors=fmt.compressors(),
        fill_value=0,
        config={"write_empty_chunks": True},
    )
    arr[lo:hi] = values
    expected = fmt.shard_file(tmp_path / "g" / "a", lo // shard, 1 + len(tail)).read_bytes()
    blosc = chunk_codec(fmt.compressors(), np.dtype(dtype).itemsize)
    assert encode_shard(values, chunk, shard, blosc) == expected


def test_other_codecs_are_refused():
    from zarr.codecs import ZstdCodec

    with pytest.raises(NotImplementedError):
        chunk_codec((ZstdCodec(),), 2)
