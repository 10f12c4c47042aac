"""Per-row scores of a token-level teacher cache (MLM / causal), from its cached targets and the rows' tokens.

A token cache keeps, per target position, a few known log-probs (top-k; the distinct sampled ids; both for
hybrid) and the rest of the mass (`tail`). The label token of a position is the one the student is trained to
predict there (MLM: the original token at the masked position; causal: the next token). Per position:

    log p(label) = the cached log-prob when the label is a known id, else log(rest) - log(V - n_known)

i.e. the rest of the mass spread uniformly over the V - n_known ids not cached (V = the teacher's vocabulary).
`rest` is exp(tail_logmass) for top-k, 1 - sum of the known masses for sampled targets, and exp(tail_logmass)
minus the sampled masses for hybrid (floored at REST_FLOOR so an fp16 rounding never gives log(0)). Scores are
at the temperature the cache stores: T = 1 for top-k, the precompute --sample-temperature for sampled/hybrid.

Per row, the mean over its labelled positions of: `ce` = -log p(label); `correct` = top-1 known id == label;
`entropy` of the known masses plus the rest spread uniformly; `margin` = p(label) - the largest known mass of
another id. A row with no labelled position (e.g. a one-token causal row) scores NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.errors import SkdError

REST_FLOOR = 1e-12  # the smallest rest mass a position can have (fp16 rounding may leave none)
READ_ROWS = 1024  # rows read per pass


def pack_ids(ids: Sequence[Sequence[int]]) -> np.ndarray:
    """The rows' token ids as one int64 array `[n_rows, lengths..., ids...]`: what token scores are keyed on."""
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]) if len(ids) else np.zeros(0, np.int64)
    return np.concatenate([[len(ids)], lengths, flat]).astype(np.int64)


def position_labels(
    head: str, ids: Sequence[Sequence[int]], rows: np.ndarray, positions: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Label token of every cached position of `rows` (flattened in row order, `counts` [B] per row): [n] int64,
    -1 where the position has none (causal: the row's last token predicts nothing)."""
    out = np.full(len(positions), -1, dtype=np.int64)
    start = 0
    for r, c in zip(rows.tolist(), counts.tolist(), strict=True):
        row_ids = np.asarray(ids[r], dtype=np.int64)
        pos = positions[start : start + c]
        target = pos + 1 if head == "causal" else pos  # causal: position t predicts token t + 1
        ok = target < len(row_ids)
        out[start : start + c][ok] = row_ids[target[ok]]
        start += c
    return out


def known_entries(t: Targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position: the known ids [n, m], their log-probs [n, m] (-inf for padding) and the rest mass [n]."""
    ids_parts, lp_parts = [], []
    rest = None
    if t.topk_ids is not None:
        ids_parts.append(t.topk_ids.numpy().astype(np.int64))
        lp_parts.append(t.topk_logprobs.numpy().astype(np.float64))
        rest = np.exp(t.tail_logmass.numpy().astype(np.float64))
    if t.sample_ids is not None:
        real = t.sample_counts.numpy() > 0  # 0 draws marks padding
        lp = np.where(real, t.sample_logprobs.numpy().astype(np.float64), -np.inf)
        ids_parts.append(np.where(real, t.sample_ids.numpy().astype(np.int64), -2))
        lp_parts.append(lp)
        rest = (1.0 if rest is None else rest) - np.exp(lp).sum(-1)
    return np.concatenate(ids_parts, -1), np.concatenate(lp_parts, -1), np.maximum(rest, REST_FLOOR)


def position_scores(t: Targets, labels: np.ndarray, vocab_size: int) -> dict[str, np.ndarray]:
    """Scores of every cached position against its label token [n] (-1: none); float64 [n] each."""
    ids, lp, rest = known_entries(t)  # [n, m], [n, m], [n]
    n_unknown = vocab_size - np.isfinite(lp).sum(-1)  # [n]
    log_rest_each = np.log(rest) - np.log(np.maximum(n_unknown, 1))
    hit = ids == labels[:, None]  # [n, m]; a label is at most one known id
    label_lp = np.where(hit.any(-1), np.where(hit, lp, 0.0).sum(-1), log_rest_each)
    p = np.exp(lp)  # 0 for padding
    top1 = ids[np.arange(len(ids)), lp.argmax(-1)] if ids.size else np.zeros(0, np.int64)
    entropy = -(p * np.where(np.isfinite(lp), lp, 0.0)).sum(-1) - rest * log_rest_each
    other = np.where(hit, 0.0, p).max(-1) if ids.size else np.zeros(0)
    return {
        "ce": -label_lp,
        "entropy": entropy,
        "correct": (top1 == labels).astype(np.float64),
        "margin": np.exp(label_lp) - other,
    }


def row_means(values: np.ndarray, labelled: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of `values` [n] over the labelled positions of each row (`counts` [B]): [B], NaN where none."""
    row = np.repeat(np.arange(len(counts)), counts)
    total = np.bincount(row[labelled], values[labelled], minlength=len(counts))
    n = np.bincount(row[labelled], minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def token_scores(cache: TeacherCache, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Scores of every row of a token-level cache against the rows' token ids (as the student tokenises them,
    which must be the teacher's tokenization): float32 [n_rows] each (see the module docstring)."""
    head = cache.targets.head
    if head not in ("mlm", "causal"):
        raise SkdError(f"teacher {cache.name}: token scores need an MLM or causal cache, not {head}")
    if len(ids) != cache.n_rows:
        raise SkdError(f"teacher {cache.name} holds {cache.n_rows} rows; got token ids of {len(ids)} rows")
    vocab = cache.manifest.teacher.vocab_size
    if not vocab:
        raise SkdError(f"teacher {cache.name}'s manifest has no vocab_size; re-run `skdcache precompute` for it")
    parts: dict[str, list[np.ndarray]] = {}
    for lo in range(0, cache.n_rows, READ_ROWS):
        rows = np.arange(lo, min(lo + READ_ROWS, cache.n_rows))
        t = cache.read(rows)
        counts = t.token_counts.numpy()
        labels = position_labels(head, ids, rows, t.positions.numpy().astype(np.int64), counts)
        for name, v in position_scores(t, labels, int(vocab)).items():
            parts.setdefault(name, []).append(row_means(v, labels >= 0, counts))
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}
