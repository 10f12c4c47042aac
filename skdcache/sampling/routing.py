"""Per-row teacher routing: each row of a batch draws its own teacher from probabilities built on cached scores.

The rules turn the team's per-row scores (`skdcache.sampling.scores`) into a table ``[n_rows, n_teachers]`` once per
run; a row's draw at a step is keyed on ``(seed, step, row)``, so it does not depend on which other rows share
its batch, and a resumed run, every DDP rank and every loader worker agree without sharing RNG state. A row
whose probabilities are all zero (`smallest-correct` where no teacher is right) gets no teacher (-1).
docs/sampling.md gives the formulas and when to use each rule.
"""

from __future__ import annotations

import numpy as np

from skdcache.cache.reader import TeacherCache
from skdcache.errors import SkdError
from skdcache.sampling.scores import teacher_scores

ROUTE_RULES = ("min-ce", "confidence", "ca-mkd", "smallest-correct", "uniform")
WEIGHT_RULES = ("ca-mkd", "confidence", "uniform", "closest-correct")
CONFIDENCE_TAU = 1.0  # nats of CE: a teacher 1 nat worse on a row is e times less likely
UNSCORED_CE = 1e9  # a row a teacher has no score on (no label position) counts as that teacher's worst
RIGHT = 0.5  # `correct` at or above this is "right" (sequence rows are 0/1; token rows the top-1 hit rate)


def parse_rule(sampling: str, mode: str) -> tuple[str, float]:
    """``--sampling`` of route / weight runs: a rule name, and for `confidence` an optional ``=tau``."""
    rule, _, tau = sampling.partition("=")
    rules = ROUTE_RULES if mode == "route" else WEIGHT_RULES
    if rule not in rules:
        raise SkdError(f"--mode {mode} takes --sampling {' | '.join(rules)} (confidence=TAU), not {sampling!r}")
    if tau and rule != "confidence":
        raise SkdError(f"--sampling {sampling}: only confidence takes a temperature, e.g. confidence=0.5")
    try:
        value = float(tau) if tau else CONFIDENCE_TAU
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SkdError(f"--sampling {sampling}: the temperature must be a number > 0, e.g. confidence=0.5")
    return rule, value


def route_table(rule: str, ce: np.ndarray, correct: np.ndarray, sizes: list[int], tau: float) -> np.ndarray:
    """Routing probabilities ``[n_rows, K]`` from per-row ``ce`` and ``correct`` ``[n_rows, K]``; a row of
    zeros means "no teacher". Ties in `min-ce` and `smallest-correct` go to the smaller teacher (then team order).
    `closest-correct` (weight mode) gives each row's candidates, 1 for every teacher right on it."""
    n, k = ce.shape
    ce = np.where(np.isfinite(ce), ce, UNSCORED_CE).astype(np.float64)
    by_size = np.lexsort((np.arange(k), np.asarray(sizes, dtype=np.float64)))  # [K] smallest first
    table = np.zeros((n, k))
    if rule == "uniform":
        table[:] = 1.0 / k
    elif rule == "min-ce":
        table[np.arange(n), by_size[np.argmin(ce[:, by_size], axis=1)]] = 1.0
    elif rule == "confidence":
        table = _softmax(-ce / tau)
    elif rule == "ca-mkd":
        table = ca_mkd_weights(ce)
    elif rule in ("smallest-correct", "closest-correct"):
        if np.isnan(correct).all():
            raise SkdError(f"--sampling {rule} needs a right/wrong per row; regression has none: use min-ce")
        right = np.nan_to_num(correct, nan=0.0) >= RIGHT  # [n, K]
        if rule == "closest-correct":  # every right teacher is a candidate; the student picks among them
            return right.astype(np.float64)
        right = right[:, by_size]  # smallest first
        has = right.any(1)
        table[np.flatnonzero(has), by_size[np.argmax(right[has], axis=1)]] = 1.0
    else:
        raise SkdError(f"unknown routing rule {rule!r}; choose one of {', '.join(ROUTE_RULES)}")
    return table


def ca_mkd_weights(ce: np.ndarray) -> np.ndarray:
    """CA-MKD (ICASSP 2022): ``w_k = (1 - softmax_k(ce_k)) / (K - 1)``, ``[n, K]``; rows sum to 1."""
    k = ce.shape[1]
    if k == 1:
        return np.ones_like(ce, dtype=np.float64)
    return (1.0 - _softmax(ce.astype(np.float64))) / (k - 1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def draw_rows(table: np.ndarray, seed: int, step: int, rows: np.ndarray) -> np.ndarray:
    """Teacher per row ``[B]`` (-1: none), each an inverse-CDF draw keyed on ``(seed, step, row)``."""
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
        p = table[row]
        total = p.sum()
        if total <= 0:
            continue
        u = np.random.default_rng([seed, step, row]).random()
        out[i] = min(int(np.searchsorted(np.cumsum(p) / total, u, side="right")), len(p) - 1)
    return out


def team_table(
    rule: str, tau: float, caches: list[TeacherCache], labels, weight: bool = False
) -> tuple[np.ndarray, dict]:
    """The run's table ``[n_rows, K]`` from every teacher's scores, and a summary for the run record."""
    scores = [teacher_scores(c, labels) for c in caches]
    ce = np.stack([s["ce"] for s in scores], axis=1)  # [n_rows, K]
    correct = np.stack([s["correct"] for s in scores], axis=1)
    sizes = [c.manifest.teacher.num_parameters or 0 for c in caches]
    table = route_table(rule, ce, correct, sizes, tau)
    summary = {
        "kind": f"{'weight' if weight else 'route'}:{rule}",
        "teachers": [c.name for c in caches],  # the order of the lists below
        "temperature": tau if rule == "confidence" else None,
        "mean_probs": [round(float(x), 4) for x in table.mean(0)],
        "no_teacher_rows": int((table.sum(1) <= 0).sum()),
        "mean_ce": [round(float(np.nanmean(s["ce"])), 4) for s in scores],
    }
    return table, summary


def routing_for_run(
    mode: str, sampling: str, caches: list[TeacherCache], head: str, labels, token_ids
) -> tuple[np.ndarray | None, dict | None]:
    """The table of a route / weight run (None for the other modes), checked against the team and the data.

    Args:
        labels: sequence heads' labels [n_rows]; token_ids: token heads' ids per row (the labels of positions).
    """
    if mode not in ("route", "weight"):
        return None, None
    rule, tau = parse_rule(sampling, mode)
    if head == "sequence" and labels is None:
        raise SkdError(f"--mode {mode} scores teachers against labels: pass --label-column (or use --mode skd)")
    if head != "sequence" and mode == "weight":
        raise SkdError("--mode weight mixes sequence teachers only (top-k sets differ per token): use --mode route")
    if head != "sequence":
        kinds = {(c.targets.targets, c.targets.top_k, c.targets.samples) for c in caches}
        if len(kinds) > 1:
            raise SkdError("--mode route merges teachers' token targets row by row: precompute them with one --top-k")
    return team_table(rule, tau, caches, labels if head == "sequence" else token_ids, weight=mode == "weight")
