"""Lossless codings of token arrays: applied by the writer just before a block is stored, undone by the reader
just after rows are gathered (the only two places that call `encode` / `decode`). Cache format v2.

Both work along the last axis on the array's unsigned-integer view (float16 as its uint16 bit pattern), keep
the first entry and store every further one as its difference to the entry before it, modulo 2**bits:

* "delta" (`topk_logprobs`): exact for any values. Top-k log-probs are descending and <= 0, so their float16
  bit patterns are non-decreasing and the differences small (k = 32: 38.8 -> 29.8 B/token on SmolLM2).
* "gaps" (`sample_ids`): for what the sampled targets hold, distinct ascending ids then zero padding. A
  padding entry is stored as 0 (a plain difference would store the wrap-around of 0 - last id, as costly as
  an id); ids are distinct, so a stored 0 after the first entry can only be padding and decodes to 0.
  `encode` refuses rows that are not of that form instead of storing something it could not restore.

Nothing is reordered: `decode(encode(x)) == x` bit for bit, so the reader returns exactly the arrays the writer
was given. A plain zarr reader undoes them as docs/cache-format.md shows. The marker checksums cover the
stored (coded) bytes, so `verify` never decodes.
"""

from __future__ import annotations

import numpy as np

DELTA = "delta"
GAPS = "gaps"
CODINGS = (DELTA, GAPS)
# The coding each array gets in caches written now; `format.plan_layout` records it per array in the layout.
CODED_ARRAYS = {"topk_logprobs": DELTA, "sample_ids": GAPS}


def coding_for(name: str) -> str | None:
    return CODED_ARRAYS.get(name)


def codings_in(layout: object) -> dict[str, str | None]:
    """Array name -> coding in a manifest's `layout` object (absent: None); {} when it lists no arrays."""
    arrays = layout.get("arrays") if isinstance(layout, dict) else None
    if not isinstance(arrays, dict):
        return {}
    return {n: a.get("coding") if isinstance(a, dict) else None for n, a in arrays.items()}


def _native(values: np.ndarray) -> np.ndarray:
    """Contiguous, in the machine's byte order (what zarr and the direct reader return here)."""
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))


def _uint_view(values: np.ndarray) -> np.ndarray:
    return values.view(np.dtype(f"u{values.dtype.itemsize}"))


def encode(coding: str | None, values: np.ndarray) -> np.ndarray:
    """`values` as stored under `coding` (same shape and dtype; None: unchanged)."""
    if coding is None:
        return values
    if coding not in CODINGS:
        raise ValueError(f"unknown token array coding {coding!r}")
    values = _native(values)
    if values.ndim < 2 or values.shape[-1] < 2:
        return values.copy()
    u = _uint_view(values)
    out = u.copy()
    np.subtract(u[..., 1:], u[..., :-1], out=out[..., 1:])  # unsigned: wraps modulo 2**bits
    if coding == GAPS:
        pad = u[..., 1:] == 0  # after the first entry, 0 is padding (ids are distinct and ascending)
        ascending = (u[..., 1:] > u[..., :-1]) | pad
        suffix = ~(pad[..., :-1] & ~pad[..., 1:])  # no id after padding
        if not (ascending.all() and suffix.all()):
            raise ValueError("gaps coding needs distinct ascending ids then zero padding in every row")
        out[..., 1:][pad] = 0
    return out.view(values.dtype)


def decode(coding: str | None, values: np.ndarray) -> np.ndarray:
    """Undo `encode`: the values the writer was given."""
    if coding is None:
        return values
    if coding not in CODINGS:
        raise ValueError(f"unknown token array coding {coding!r}")
    values = _native(values)
    if values.ndim < 2 or values.shape[-1] < 2:
        return values.copy()
    u = _uint_view(values)
    out = np.cumsum(u, axis=-1, dtype=u.dtype)
    if coding == GAPS:
        out[..., 1:][u[..., 1:] == 0] = 0
    return out.view(values.dtype)
