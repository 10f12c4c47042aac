"""Paired statistics for the quality study: seeds are the unit, runs of one seed share data order and init."""

from __future__ import annotations

import numpy as np

Z_95, Z_80_POWER = 1.959964, 0.841621
MIN_SEEDS = 5  # fewer seeds: the interval is shown, no verdict is claimed


def bootstrap_mean_ci(diffs: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of paired differences, resampling seeds with replacement."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size < 2:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, diffs.size, size=(n_boot, diffs.size))
    means = diffs[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def seeds_needed(diffs: np.ndarray) -> float:
    """Seeds a paired comparison needs to detect a difference of the observed size (two-sided 5%, power 80%)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size < 2 or diffs.mean() == 0:
        return float("inf")
    sd = diffs.std(ddof=1)
    return float(np.ceil(((Z_95 + Z_80_POWER) * sd / abs(diffs.mean())) ** 2)) if sd > 0 else 2.0


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Run minus baseline over the seeds both have: mean, 95% bootstrap interval, verdict, seeds needed."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    lo, hi = bootstrap_mean_ci(d)
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    if len(seeds) < MIN_SEEDS:  # a percentile bootstrap over 2-4 values is far too narrow to claim anything
        verdict = f"{verdict}? ({len(seeds)} seeds)"
    return {
        "mean": float(d.mean()),
        "lo": lo,
        "hi": hi,
        "n": len(seeds),
        "verdict": verdict,
        "seeds_needed": seeds_needed(d),
    }
