"""Per-row teacher scores: how well each cached teacher does on each row, from its cached targets and the labels.

Per-row routing (`sampling.routing`) picks a teacher for every row from these numbers. They cost one pass over a
cache's rows and no teacher forward, so old caches get them too; they are stored BESIDE the teacher cache
(`<root>/<dataset_fp>/.scores/<cache_key>.<labels_hash>.npz`), never inside its checksummed group, keyed by the
content they depend on (cache key, labels, `SCORES_VERSION`), written atomically and read without pickle.

Sequence classification (logits at T = 1): `ce` = -log p(label), `entropy` of p, `correct` = argmax == label,
`margin` = p(label) - max over the other classes (negative when wrong). Regression (one output): `ce` = squared
error, `correct` = |error| <= REGRESSION_TOLERANCE x std(labels), `entropy` and `margin` are NaN. Token-level
caches (MLM / causal) score against the rows' token ids: `skdcache.sampling.token_scores` gives the rules.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from skdcache.cache.reader import TeacherCache
from skdcache.cache.store import atomic_write
from skdcache.errors import SkdError
from skdcache.sampling.token_scores import pack_ids, token_scores

SCORES_VERSION = 1
SCORE_NAMES = ("ce", "entropy", "correct", "margin")
SCORES_DIR = ".scores"
REGRESSION_TOLERANCE = 0.25  # a regression prediction is "correct" within a quarter of the labels' spread
READ_ROWS = 4096  # rows read per pass; the scores need the targets of every row once


def sequence_scores(
    logits: np.ndarray, labels: np.ndarray, task: str, spread: float | None = None
) -> dict[str, np.ndarray]:
    """Scores of one teacher from its logits [n, C] and the labels [n]; float32 [n] each.

    Args:
        spread: regression: the standard deviation of ALL the labels (default: of these), so that scores read
            in parts equal scores read at once.
    """
    z = logits.astype(np.float64)
    y = np.asarray(labels)
    if len(y) != len(z):
        raise ValueError(f"{len(z)} rows of logits for {len(y)} labels")
    if task == "regression":
        err = z[:, 0] - y.astype(np.float64)
        spread = (float(np.std(y)) if spread is None else spread) or 1.0
        nan = np.full(len(y), np.nan)
        out = {"ce": err**2, "entropy": nan, "correct": np.abs(err) <= REGRESSION_TOLERANCE * spread, "margin": nan}
    else:
        y = y.astype(np.int64)
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))  # log_softmax, [n, C]
        p = np.exp(logp)
        rows = np.arange(len(y))
        others = p.copy()
        others[rows, y] = -np.inf
        out = {
            "ce": -logp[rows, y],
            "entropy": -(p * logp).sum(-1),
            "correct": z.argmax(-1) == y,
            "margin": p[rows, y] - others.max(-1) if p.shape[1] > 1 else np.ones(len(y)),
        }
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def labels_hash(labels: np.ndarray) -> str:
    """Content key of the labels the scores compare against (dtype, shape and values) and the score rules."""
    labels = np.ascontiguousarray(labels)
    h = hashlib.blake2b(digest_size=8)
    h.update(f"scores-v{SCORES_VERSION}|{labels.dtype.str}|{labels.shape}|".encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def scores_path(cache: TeacherCache, labels: np.ndarray) -> Path:
    """Where a teacher cache's scores for these labels live: beside the cache group, never inside it."""
    return cache.path.parent / SCORES_DIR / f"{cache.path.name}.{labels_hash(labels)}.npz"


def teacher_scores(cache: TeacherCache, labels: np.ndarray, task: str | None = None) -> dict[str, np.ndarray]:
    """Scores of every row of `cache` against `labels` [n_rows]: read when stored, else computed once and stored.

    Token-level caches take the rows' token ids instead (a list of n_rows id lists, as the student tokenises
    them); the scores are then keyed on those ids.

    Args:
        task: classification | regression; default: regression when the labels are floats.
    """
    if (
        cache.targets.head != "sequence"
    ):  # token heads: `labels` are the rows' token ids (skdcache.sampling.token_scores)
        packed = pack_ids(labels)
        path = scores_path(cache, packed)
        stored = read_scores(path, cache.n_rows)
        if stored is None:
            stored = token_scores(cache, labels)
            write_scores(path, stored)
        return stored
    labels = np.asarray(labels)
    if labels.shape != (cache.n_rows,):
        raise SkdError(f"teacher {cache.name} holds {cache.n_rows} rows; got labels of shape {labels.shape}")
    path = scores_path(cache, labels)
    stored = read_scores(path, cache.n_rows)
    if stored is not None:
        return stored
    task = task or ("regression" if labels.dtype.kind == "f" else "classification")
    spread = float(np.std(labels)) if task == "regression" else None
    parts = []
    for lo in range(0, cache.n_rows, READ_ROWS):  # a few MB of logits at a time
        rows = np.arange(lo, min(lo + READ_ROWS, cache.n_rows))
        parts.append(sequence_scores(cache.read(rows).logits.numpy(), labels[rows], task, spread))
    scores = {k: np.concatenate([p[k] for p in parts]) for k in SCORE_NAMES}
    write_scores(path, scores)
    return scores


def write_scores(path: Path, scores: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **scores)
    atomic_write(path, buf.getvalue())


def read_scores(path: Path, n_rows: int | None = None) -> dict[str, np.ndarray] | None:
    """Stored scores, or None when absent or unreadable (they are then computed again; never unpickled)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            scores = {k: np.asarray(f[k], dtype=np.float32) for k in SCORE_NAMES}
    except (OSError, ValueError, KeyError):
        return None
    if n_rows is not None and any(v.shape != (n_rows,) for v in scores.values()):
        return None
    return scores


def stored_scores(cache_path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every stored score file of one teacher cache, by labels hash (what `skdcache info` shows)."""
    folder = Path(cache_path).parent / SCORES_DIR
    found = {}
    for f in sorted(folder.glob(f"{Path(cache_path).name}.*.npz")) if folder.is_dir() else []:
        scores = read_scores(f)
        if scores is not None:
            found[f.name.split(".")[1]] = scores
    return found


def summarize(scores: dict[str, np.ndarray]) -> str:
    """One line: the mean of every score over rows (NaN-free ones), `correct` as a rate."""
    parts = []
    for k in SCORE_NAMES:
        v = scores[k]
        if np.isnan(v).all():
            continue
        parts.append(f"{k} {np.nanmean(v):.1%}" if k == "correct" else f"{k} {np.nanmean(v):.4f}")
    return ", ".join(parts)
