"""The direct shard reader returns exactly what zarr returns, including unwritten (gap) chunks."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache.fastread import ShardedRows
from skdcache.cache.manifest import FORMAT_VERSION, Manifest
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter


@pytest.fixture
def written(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    counts = rng.integers(0, 40, n)
    spec = TargetSpec("causal", 64, top_k=4, hidden_layers=(0, 1), hidden_tokens="cls")
    layout, index = fmt.plan_layout(spec, n, None, 1000, 24, counts, None, rows_per_block=64)
    manifest = Manifest(
        FORMAT_VERSION, {"name": "x"}, "-", {"fingerprint": "f", "n_rows": n}, spec.to_dict(), layout.to_dict()
    )
    writer = CacheWriter(tmp_path / "g", manifest, layout, index)
    for b in range(layout.n_blocks):
        lo, hi = layout.block_rows(b)
        t = int(counts[lo:hi].sum())
        writer.write_block(
            b,
            {
                "topk_logprobs": rng.normal(size=(t, 4)),
                "topk_ids": rng.integers(0, 1000, (t, 4)),
                "tail_logmass": rng.normal(size=t),
                "positions": rng.integers(0, 64, t),
                "hidden": rng.normal(size=(hi - lo, 2, 24)),
            },
        )
    return tmp_path / "g", layout


@pytest.mark.parametrize("name", ["topk_logprobs", "topk_ids", "tail_logmass", "positions", "hidden", "token_index"])
def test_direct_reads_equal_zarr(written, name):
    path, layout = written
    array = zarr.open_array(str(path / name), mode="r")
    reader = ShardedRows(path / name, array)
    rng = np.random.default_rng(1)
    if name in ("hidden", "token_index"):
        valid = np.arange(array.shape[0])
    else:  # token arrays: only the written ranges (block tails up to the next shard are never written)
        index = zarr.open_array(str(path / "token_index"), mode="r")[:]
        valid = np.concatenate([np.arange(s, s + c) for s, c in index])
    rows = rng.choice(valid, 500)  # random and repeated
    rows[:2] = [valid[0], valid[-1]]
    expected = array.get_orthogonal_selection((np.unique(rows),))[np.unique(rows, return_inverse=True)[1]]
    got = reader.rows(rows)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_open_file_budget_evicts_without_changing_reads(written):
    """Fewer open files than shards (5 hidden shards, budget 2): files are reopened, bytes are the same."""
    path, _ = written
    array = zarr.open_array(str(path / "hidden"), mode="r")
    rows = np.random.default_rng(2).integers(0, array.shape[0], 200)
    small, default = ShardedRows(path / "hidden", array, max_open_files=2), ShardedRows(path / "hidden", array)
    np.testing.assert_array_equal(small.rows(rows), default.rows(rows))
    assert len(small._fds) == 2 and len(default._fds) == 5
    assert default._max_open >= 64


def test_unknown_codec_chain_is_refused(tmp_path):
    array = zarr.create_array(str(tmp_path / "plain"), shape=(10,), chunks=(5,), dtype="f4")
    with pytest.raises(ValueError):
        ShardedRows(tmp_path / "plain", array)


def test_missing_or_damaged_shard_is_refused(written):
    from skdcache.errors import CacheError

    path, layout = written
    array = zarr.open_array(str(path / "hidden"), mode="r")
    shard = path / "hidden" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside the first inner chunk's compressed bytes
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="damaged"):
        ShardedRows(path / "hidden", array).rows(np.array([64]))
    shard.unlink()
    with pytest.raises(CacheError, match="missing"):
        ShardedRows(path / "hidden", array).rows(np.array([64]))
