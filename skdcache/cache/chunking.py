"""How the format cuts arrays into inner chunks and shards (`format.plan_layout` uses them).

Chunks are about TARGET_CHUNK_BYTES so a random read decodes little; shards are whole multiples of a block's
rows so that each shard is written by exactly one writer in one call (zarr #3682).
"""

from __future__ import annotations

import math

import numpy as np

CHUNKS_PER_TOKEN_SHARD = 64
TARGET_CHUNK_BYTES = 32 * 1024


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(np.floor(np.log2(max(x, 1)))))


def row_chunk(row_bytes: int, rows_per_block: int) -> int:
    """Inner chunk length: about TARGET_CHUNK_BYTES, and always a divisor of the block (shards tile exactly).

    Wide rows (hidden states) get chunks of a few rows: a random read decodes one chunk per row it needs.
    """
    return math.gcd(rows_per_block, int(_pow2_floor(TARGET_CHUNK_BYTES / max(row_bytes, 1))))


def token_chunk(token_bytes: int) -> int:
    return int(min(4096, max(16, _pow2_floor(TARGET_CHUNK_BYTES / max(token_bytes, 1)))))


def aligned_starts(counts: np.ndarray, rows_per_block: int, shard_len: int) -> tuple[np.ndarray, int]:
    """Start of each row's tokens when every block begins on a shard boundary.

    Args:
        counts: [n_rows] number of token targets per row.
    Returns:
        starts [n_rows] int64 and the total token-axis length.
    """
    starts = np.zeros(len(counts), dtype=np.int64)
    base = 0
    for b0 in range(0, len(counts), rows_per_block):
        block = counts[b0 : b0 + rows_per_block].astype(np.int64)
        starts[b0 : b0 + len(block)] = base + np.concatenate([[0], np.cumsum(block)[:-1]])
        used = int(block.sum())
        base += -(-used // shard_len) * shard_len if b0 + rows_per_block < len(counts) else used
    return starts, max(base, 1)
