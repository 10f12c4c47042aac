"""Lossless codings of token arrays: applied by the writer just before a block is stored, undone by the reader
just after rows are gathered (the only two places that call `encode` / `decode`).

One coding exists, "delta" (cache format v2): along the last axis, the first entry is kept and every further
one is replaced by its difference to the entry before it, computed on the array's unsigned-integer view
(float16 as its uint16 bit pattern) modulo 2**bits. It is applied to two arrays:

* `topk_logprobs`: the top-k log-probs are descending and <= 0, so their float16 bit patterns are
  non-decreasing and the differences small (k = 32: 38.8 -> 29.8 B/token on the SmolLM2 benchmark);
* `sample_ids`: distinct ascending ids then zero padding, so the differences are the gaps between drawn ids
  (the first padding entry stores the wrap-around of 0 - last id, the others 0).

Nothing is reordered: `decode(encode(x)) == x` bit for bit for any input (the arithmetic is modular), so the
reader returns exactly the arrays the writer was given. A plain zarr reader undoes it with
`np.cumsum(x.view(uint), axis=-1, dtype=uint).view(x.dtype)` (docs/cache-format.md). The marker checksums
cover the stored (coded) bytes, so `verify` never decodes.
"""

from __future__ import annotations

import numpy as np

DELTA = "delta"
CODINGS = (DELTA,)
# The coding each array gets in caches written now; `format.plan_layout` records it per array in the layout.
CODED_ARRAYS = {"topk_logprobs": DELTA, "sample_ids": DELTA}


def coding_for(name: str) -> str | None:
    return CODED_ARRAYS.get(name)


def _native(values: np.ndarray) -> np.ndarray:
    """Contiguous, in the machine's byte order (what zarr and the direct reader return here)."""
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))


def _uint_view(values: np.ndarray) -> np.ndarray:
    return values.view(np.dtype(f"u{values.dtype.itemsize}"))


def encode(coding: str | None, values: np.ndarray) -> np.ndarray:
    """`values` as stored under `coding` (same shape and dtype; None: unchanged)."""
    if coding is None:
        return values
    if coding != DELTA:
        raise ValueError(f"unknown token array coding {coding!r}")
    values = _native(values)
    if values.ndim < 2 or values.shape[-1] < 2:
        return values.copy()
    u = _uint_view(values)
    out = u.copy()
    np.subtract(u[..., 1:], u[..., :-1], out=out[..., 1:])  # unsigned: wraps modulo 2**bits
    return out.view(values.dtype)


def decode(coding: str | None, values: np.ndarray) -> np.ndarray:
    """Undo `encode`: the values the writer was given."""
    if coding is None:
        return values
    if coding != DELTA:
        raise ValueError(f"unknown token array coding {coding!r}")
    values = _native(values)
    if values.ndim < 2 or values.shape[-1] < 2:
        return values.copy()
    u = _uint_view(values)
    return np.cumsum(u, axis=-1, dtype=u.dtype).view(values.dtype)
