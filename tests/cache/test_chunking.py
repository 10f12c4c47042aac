"""Chunks and shards: inner chunks divide their shard, every block's token range starts on a shard boundary,
and no two blocks ever write the same shard file (each shard has exactly one writer, zarr #3682)."""

from __future__ import annotations

import numpy as np
import pytest

from skdcache.cache import format as fmt
from skdcache.cache import kinds
from skdcache.cache.chunking import (
    CHUNKS_PER_TOKEN_SHARD,
    TARGET_CHUNK_BYTES,
    aligned_starts,
    row_chunk,
    token_chunk,
)
from skdcache.cache.spec import TargetSpec


def largest_pow2_at_most(x: float) -> int:
    """The plain loop: the largest power of two <= x (1 for x < 2)."""
    p = 1
    while p * 2 <= x:
        p *= 2
    return p


def reference_starts(counts: list[int], rows_per_block: int, shard_len: int) -> tuple[list[int], int]:
    """aligned_starts written row by row: a new block jumps to the next shard boundary."""
    starts, pos = [], 0
    for row, count in enumerate(counts):
        if row % rows_per_block == 0 and row > 0:
            pos = -(-pos // shard_len) * shard_len
        starts.append(pos)
        pos += count
    return starts, max(pos, 1)


@pytest.mark.parametrize("rows_per_block", [1, 2, 64, 1024, 96, 1000])
@pytest.mark.parametrize("row_bytes", [0, 1, 2, 6, 100, 4096, 32 * 1024, 32 * 1024 + 1, 10**7])
def test_row_chunk_divides_the_block_and_stays_near_the_target(row_bytes: int, rows_per_block: int):
    chunk = row_chunk(row_bytes, rows_per_block)
    assert chunk >= 1 and rows_per_block % chunk == 0  # chunks tile every block's shard exactly
    assert chunk & (chunk - 1) == 0  # a power of two (a divisor of one, for odd-sized blocks)
    expected = largest_pow2_at_most(TARGET_CHUNK_BYTES / max(row_bytes, 1))
    assert chunk == np.gcd(rows_per_block, expected)
    if rows_per_block & (rows_per_block - 1) == 0:  # power-of-two blocks: the target, capped by the block
        assert chunk == min(rows_per_block, expected)
        assert chunk * max(row_bytes, 1) <= max(TARGET_CHUNK_BYTES, row_bytes)


def test_wide_rows_get_one_row_chunks():
    assert row_chunk(8 * TARGET_CHUNK_BYTES, 1024) == 1
    assert row_chunk(6, 1024) == 1024  # 6-byte rows: 5461 would fit, the block caps it


@pytest.mark.parametrize("token_bytes", [0, 1, 2, 7, 8, 9, 100, 2048, 2049, 4096, 10**6])
def test_token_chunk_is_a_clamped_power_of_two(token_bytes: int):
    chunk = token_chunk(token_bytes)
    assert 16 <= chunk <= 4096 and chunk & (chunk - 1) == 0
    assert chunk == min(4096, max(16, largest_pow2_at_most(TARGET_CHUNK_BYTES / max(token_bytes, 1))))


def test_token_chunk_bounds():
    assert token_chunk(1) == 4096  # 32768 one-byte tokens would fit: capped
    assert token_chunk(10**6) == 16  # a huge token still gets 16 per chunk
    assert token_chunk(66) == 256  # 32768 / 66 = 496.5 -> 256


@pytest.mark.parametrize("seed", range(6))
def test_aligned_starts_equal_a_row_by_row_walk(seed: int):
    rng = np.random.default_rng(seed)
    n, rpb, shard = int(rng.integers(1, 300)), int(rng.choice([1, 4, 16, 64])), int(rng.choice([1, 8, 64, 1024]))
    counts = rng.integers(0, 40, n)
    counts[rng.random(n) < 0.2] = 0  # rows without targets
    starts, total = aligned_starts(counts, rpb, shard)
    ref_starts, ref_total = reference_starts(counts.tolist(), rpb, shard)
    assert starts.dtype == np.int64 and starts.tolist() == ref_starts
    assert total == ref_total


def test_blocks_own_disjoint_whole_shards():
    """Each block's token range starts on a shard boundary, ranges are in row order, and the shards one block
    touches are touched by no other block: the writer writes each shard file whole, once."""
    rng = np.random.default_rng(7)
    rpb, shard = 16, 64
    counts = rng.integers(0, 30, 200)
    counts[32:48] = 0  # a whole block without targets
    starts, total = aligned_starts(counts, rpb, shard)
    owner: dict[int, int] = {}
    previous_end = 0
    for block, b0 in enumerate(range(0, len(counts), rpb)):
        lo, hi = int(starts[b0]), int(starts[b0] + counts[b0 : b0 + rpb].sum())
        assert lo % shard == 0 and lo >= previous_end
        assert np.array_equal(starts[b0 : b0 + rpb] + counts[b0 : b0 + rpb], np.append(starts[b0 + 1 : b0 + rpb], hi))
        for s in range(lo // shard, -(-hi // shard)):  # the shards this block's tokens lie in
            assert owner.setdefault(s, block) == block, f"shard {s} written by blocks {owner[s]} and {block}"
        previous_end = hi
    assert total == previous_end  # the last block is not padded to a shard boundary


def test_aligned_starts_edge_cases():
    starts, total = aligned_starts(np.array([], dtype=np.int64), 4, 8)
    assert starts.shape == (0,) and total == 1  # an empty array still has one element of extent
    starts, total = aligned_starts(np.zeros(10, dtype=np.int64), 4, 8)
    assert starts.tolist() == [0] * 10 and total == 1
    starts, total = aligned_starts(np.array([3, 2, 5]), 4, 8)  # one block: no padding at all
    assert starts.tolist() == [0, 3, 5] and total == 10
    starts, total = aligned_starts(np.array([3, 2, 5, 1]), 2, 8)
    assert starts.tolist() == [0, 3, 8, 13] and total == 14
    starts, total = aligned_starts(np.array([4, 4, 1]), 2, 8)  # a block filling its shard exactly
    assert starts.tolist() == [0, 4, 8] and total == 9


@pytest.mark.parametrize(
    ("spec", "hidden"),
    [
        (TargetSpec("sequence", 32, hidden_layers=(0, 2), hidden_tokens="cls"), 48),
        (TargetSpec("sequence", 32, hidden_layers=(1,), hidden_tokens="all"), 32),
        (TargetSpec("causal", 32, top_k=8), None),
        (
            TargetSpec(
                "causal",
                32,
                top_k=4,
                targets="hybrid",
                samples=6,
                sample_temperature=2.0,
                sample_seed=0,
            ),
            None,
        ),
    ],
)
def test_planned_layouts_tile_their_shapes(spec: TargetSpec, hidden: int | None):
    """In a planned layout every chunk divides its shard, row arrays shard by block, and every block's token
    range (from the index arrays) starts on a shard boundary."""
    rng = np.random.default_rng(1)
    n, rpb = 100, 32
    counts = rng.integers(0, 20, n)
    lengths = rng.integers(1, 33, n)
    layout, index = fmt.plan_layout(spec, n, 3, 300, hidden, counts, lengths, rows_per_block=rpb)
    assert set(layout.arrays) == kinds.array_names(spec)
    for a in layout.arrays.values():
        assert a.shard_rows % a.chunk_rows == 0, a.name
        index_name = fmt.index_array(a.name, layout.arrays)
        if index_name is None:
            assert a.shape[0] == n and a.shard_rows == rpb, a.name
            continue
        assert a.shard_rows == a.chunk_rows * CHUNKS_PER_TOKEN_SHARD
        idx = index[index_name]
        assert a.shape[0] == max(1, int(idx[-1].sum()))  # the last block is not padded
        for b in range(layout.n_blocks):
            start, stop = layout.block_rows(b)
            assert idx[start, 0] % a.shard_rows == 0, (a.name, b)
            assert np.array_equal(idx[start + 1 : stop, 0], (idx[start : stop - 1, 0] + idx[start : stop - 1, 1]))
