"""One `Targets` for a batch whose rows each read their own teacher (per-row routing).

Each teacher is read once, for its rows only; the parts are merged in batch row order so the loss sees one
`Targets` as in single-teacher KD. Rows without a teacher are left out, and `row_mask` says which rows are in.
"""

from __future__ import annotations

import numpy as np
import torch

from skdcache.cache.kinds import TOKEN_ARRAYS
from skdcache.cache.reader import Targets


def merge_rows(parts: list[tuple[np.ndarray, Targets]], batch_size: int) -> Targets:
    """Merge per-teacher parts into batch row order.

    Args:
        parts: (batch positions [b_t] the teacher serves, ascending; its `Targets` of those rows, same order).
        batch_size: B; positions not in any part get no targets (`row_mask` False).
    """
    owner = np.full(batch_size, -1, dtype=np.int64)  # [B] part serving each row
    local = np.zeros(batch_size, dtype=np.int64)  # [B] that row's index inside its part
    for p, (where, _) in enumerate(parts):
        owner[where], local[where] = p, np.arange(len(where))
    routed = np.flatnonzero(owner >= 0)  # [B_r] batch positions with a teacher, in order
    out = Targets(row_mask=torch.from_numpy(owner >= 0))
    if not parts:
        return out
    first = parts[0][1]
    if first.logits is not None:  # [B_r, C]
        out.logits = torch.cat([t.logits for _, t in parts])[_part_order(parts, owner, local, routed)]
    if first.token_counts is not None:
        counts = [t.token_counts.numpy() for _, t in parts]
        starts, base = [], 0
        for c in counts:  # where each part's rows start in the concatenated token arrays
            starts.append(base + np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64))
            base += int(c.sum())
        row_start = np.array([starts[owner[i]][local[i]] for i in routed], dtype=np.int64)
        row_count = np.array([counts[owner[i]][local[i]] for i in routed], dtype=np.int64)
        gather = torch.from_numpy(_expand(row_start, row_count))  # [n_tok_r] into the concatenation
        for name in TOKEN_ARRAYS:  # the per-position fields of `Targets`
            if getattr(first, name) is not None:
                setattr(out, name, torch.cat([getattr(t, name) for _, t in parts])[gather])
        out.token_counts = torch.from_numpy(row_count)
    return out


def _part_order(parts: list[tuple[np.ndarray, Targets]], owner: np.ndarray, local: np.ndarray, routed: np.ndarray):
    """Index into the concatenated per-part rows that puts them in batch order: [B_r]."""
    offsets = np.concatenate([[0], np.cumsum([len(w) for w, _ in parts])[:-1]]).astype(np.int64)
    return torch.from_numpy(offsets[owner[routed]] + local[routed])


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Token indices of rows given (start, count): [sum(counts)] int64."""
    if counts.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(s, s + c, dtype=np.int64) for s, c in zip(starts, counts, strict=True)])
