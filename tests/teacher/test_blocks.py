"""One block of a teacher cache: the NaN / inf check (every non-finite float16 is found, wherever it lies in the
block) and the assembly of batch outputs in row order."""

from __future__ import annotations

import time

import numpy as np
import pytest

from skdcache.cache import format as fmt
from skdcache.cache.spec import TargetSpec
from skdcache.data.rows import Encoded
from skdcache.errors import CacheError, SkdError
from skdcache.stages import StageClock
from skdcache.teacher.blocks import _BlockBuffer, _token_places, capture, check_finite, length_batches, token_positions


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", [0, 300_000, -1])
def test_non_finite_hidden_is_refused(bad, where):
    hidden = np.random.default_rng(0).standard_normal((1000, 3, 200)).astype(np.float16)
    check_finite(0, {"hidden": hidden}, "t")
    hidden.reshape(-1)[where] = bad
    with pytest.raises(SkdError, match="NaN/inf hidden in block 7"):
        check_finite(7, {"hidden": hidden}, "t")


def test_largest_finite_values_pass():
    logits = np.array([[65504.0, -65504.0, 0.0]], dtype=np.float16)
    check_finite(0, {"logits": logits}, "t")
    with pytest.raises(SkdError):  # other dtypes are checked too
        check_finite(0, {"logits": logits.astype(np.float32) * np.float32(np.inf)}, "t")


def test_token_places_match_a_row_by_row_copy():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, 40)
    batch = rng.permutation(40)[:17]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    expected = np.concatenate([np.arange(offsets[r], offsets[r] + counts[r]) for r in batch])
    assert np.array_equal(_token_places(counts, batch), expected)


def test_length_batches_cover_the_block_longest_first():
    lengths = np.array([5, 9, 1, 9, 3, 7, 7, 2, 8, 4])
    batches = length_batches(lengths, range(2, 9), 3)
    assert [b.tolist() for b in batches] == [[3, 8, 5], [6, 4, 7], [2]]  # ties keep row order (stable)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(2, 9)) and all(b.dtype == np.int64 for b in batches)
    assert np.all(np.diff(lengths[flat]) <= 0)
    assert length_batches(lengths, range(4, 4), 3) == []


def test_token_positions():
    spec = TargetSpec("causal", 16, top_k=2)
    enc = Encoded(ids=[[5, 6, 7], [8]], type_ids=None)
    assert token_positions("sequence", enc, None, TargetSpec("sequence", 16)) is None
    assert [p.tolist() for p in token_positions("causal", enc, None, spec)] == [[0, 1, 2], [0]]
    chat = Encoded(ids=[[5, 6, 7, 8]], type_ids=None, assistant=[np.array([0, 0, 1, 1], dtype=bool)])
    assert [p.tolist() for p in token_positions("causal", chat, None, spec)] == [[1, 2]]  # t predicts t + 1


def test_block_buffer_assembles_batches_in_row_order():
    """Batches arrive in length order; every row array, token array and hidden-state token lands at its row's place,
    as a row-by-row concatenation would put it."""
    rng = np.random.default_rng(3)
    n, rpb = 20, 8
    positions = [np.arange(int(c)) for c in rng.integers(0, 5, n)]
    lengths = rng.integers(1, 7, n)
    spec = TargetSpec("causal", 16, top_k=2, hidden_layers=(1,), hidden_tokens="all")
    counts = np.array([len(p) for p in positions])
    layout, _ = fmt.plan_layout(spec, n, None, 100, 4, counts, lengths, rows_per_block=rpb)
    rows = range(8, 16)

    def token_values(row: int, count: int, width: int) -> np.ndarray:  # values that name their row and token
        return (row * 100 + np.arange(count)[:, None] * 10 + np.arange(width)).astype(np.float16)

    block = _BlockBuffer(rows, positions, lengths, layout)
    for batch in length_batches(lengths, rows, 3):
        block.put(
            batch,
            {
                "topk_logprobs": np.concatenate([token_values(r, counts[r], 2) for r in batch]),
                "hidden": np.concatenate([token_values(r, lengths[r], 4)[:, None, :] for r in batch]),
            },
        )
    assert np.array_equal(block.arrays["topk_logprobs"], np.concatenate([token_values(r, counts[r], 2) for r in rows]))
    expected_hidden = np.concatenate([token_values(r, lengths[r], 4)[:, None, :] for r in rows])
    assert np.array_equal(block.arrays["hidden"], expected_hidden)

    logits_layout, _ = fmt.plan_layout(TargetSpec("sequence", 16), n, 3, None, None, None, None, rows_per_block=rpb)
    block = _BlockBuffer(rows, None, lengths, logits_layout)
    for batch in length_batches(lengths, rows, 3):
        block.put(batch, {"logits": np.stack([np.full(3, r, dtype=np.float16) for r in batch])})
    assert block.arrays["logits"][:, 0].tolist() == list(rows)


class FakeWriter:
    def __init__(self, fail_at: int | None = None, computed: list[int] | None = None, pause: float = 0.0):
        self.clock = StageClock()
        self.written: list[int] = []
        self.seen_computed: list[int] = []
        self.fail_at, self.computed, self.pause = fail_at, computed, pause

    def write_block(self, block: int, data: dict) -> None:
        if self.pause and block == 0:
            time.sleep(self.pause)  # a slow disk: a compute loop without backpressure would run far ahead
        if self.computed is not None:
            self.seen_computed.append(len(self.computed))
        if block == self.fail_at:
            raise CacheError(f"disk full while writing block {block}")
        self.written.append(block)


def test_capture_writes_every_block_in_order_and_bounds_the_blocks_in_flight():
    computed: list[int] = []

    def compute(block: int) -> dict:
        computed.append(block)
        return {"logits": np.full((4, 3), block, dtype=np.float16)}

    writer = FakeWriter(computed=computed, pause=0.2)
    capture(list(range(8)), compute, writer, "t", in_flight=2)
    assert writer.written == list(range(8)) and computed == list(range(8))
    # while block b is written, at most blocks b .. b + in_flight have been computed beyond it
    assert all(seen <= b + 3 for b, seen in enumerate(writer.seen_computed)), writer.seen_computed
    assert writer.clock.summary()["check"]["calls"] == 8  # each block is checked for NaN / inf before writing


def test_capture_raises_a_writer_error_and_stops_computing():
    computed: list[int] = []

    def compute(block: int) -> dict:
        computed.append(block)
        return {"logits": np.zeros((4, 3), dtype=np.float16)}

    writer = FakeWriter(fail_at=1)
    with pytest.raises(CacheError, match="disk full while writing block 1"):
        capture(list(range(10)), compute, writer, "t", in_flight=2)
    # the error surfaces when block 1's result is awaited, before block 4 is computed; blocks already handed to
    # the writer still finish (each is whole and marked: a rerun resumes with block 1)
    assert computed == [0, 1, 2, 3] and writer.written == [0, 2, 3]


def test_capture_refuses_a_non_finite_block_unwritten():
    def compute(block: int) -> dict:
        logits = np.zeros((4, 3), dtype=np.float16)
        if block == 2:
            logits[1, 1] = np.nan
        return {"logits": logits}

    writer = FakeWriter()
    with pytest.raises(SkdError, match="teacher big produced NaN/inf logits in block 2"):
        capture([0, 1, 2, 3], compute, writer, "big")
    assert 2 not in writer.written and writer.written[:2] == [0, 1]  # the bad block is never written (nor marked)
