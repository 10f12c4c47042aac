"""The fixed teacher distributions of stochastic knowledge distillation: uniform, custom weights, metric-ranked.

At every training step one teacher index is drawn from a categorical distribution. The shared interface and
the ``(seed, step)``-keyed draw are in `base`; `factory.build_sampler` turns `--sampling` into any sampler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skdcache.sampling.base import Feedback, Sampler, check_kind, check_seed, draw_teacher


class CategoricalSampler:
    """A fixed categorical distribution (uniform, custom weights, or metric-ranked).

    Args:
        probs: Probabilities, ``[n_teachers]``; must be finite, non-negative and sum to 1.
        seed: Non-negative seed shared by all ranks.
        kind: Name for run records.
        meta: JSON-ready provenance (e.g. the metrics and temperature) copied into the state dict.
    """

    adaptive = False  # a pure function of the step: loader workers may draw ahead

    def __init__(self, probs: Sequence[float], seed: int, kind: str, meta: Mapping[str, Any] | None = None) -> None:
        self._probs = _check_probs(probs)
        self._seed = check_seed(seed)
        self._kind = kind
        self._meta = dict(meta or {})

    @property
    def kind(self) -> str:
        return self._kind

    def sample(self, step: int) -> int:
        return draw_teacher(self._probs, self._seed, step)

    def probs(self) -> np.ndarray:
        return self._probs.copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self._kind,
            "seed": self._seed,
            "probs": self._probs.tolist(),
            "meta": dict(self._meta),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_kind(self._kind, state)
        probs = _check_probs(state["probs"])
        if probs.shape != self._probs.shape:
            raise ValueError(
                f"state has {probs.size} teachers but this sampler has {self._probs.size}: "
                "resume with the same teacher team"
            )
        self._probs = probs
        self._seed = check_seed(state["seed"])
        self._meta = dict(state.get("meta", {}))

    def observe(self, step: int, feedback: Feedback) -> None:
        return None  # fixed: nothing the student does changes it


def _check_probs(probs: Sequence[float]) -> np.ndarray:
    """Validate an explicit distribution; tolerate float rounding in the sum."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or not math.isclose(arr.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"probs must be finite, non-negative and sum to 1, got {arr.tolist()}")
    return arr / arr.sum()


def uniform(n: int, seed: int) -> CategoricalSampler:
    """Every teacher equally likely (the SKDBERT default).

    Args:
        n: Team size.
        seed: Non-negative seed.
    """
    if n < 1:
        raise ValueError(f"team size must be >= 1, got {n}")
    return CategoricalSampler(np.full(n, 1.0 / n), seed, kind="uniform")


def from_weights(weights: Sequence[float], n_teachers: int, seed: int) -> CategoricalSampler:
    """User-given relative weights (e.g. ``0.2,0.3,0.5``), normalised to sum to 1.

    Args:
        weights: One non-negative finite weight per teacher, ``[n_teachers]``; zeros disable a teacher.
        n_teachers: Team size, checked against ``len(weights)``.
        seed: Non-negative seed.
    """
    if isinstance(weights, str):
        raise ValueError(f"weights must be numbers, got the string {weights!r}: split it on ',' first")
    arr = np.asarray(weights, dtype=np.float64)
    if arr.ndim != 1 or arr.size != n_teachers:
        raise ValueError(f"got {arr.size} weights for {n_teachers} teachers: give exactly one weight per teacher")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"weights must be finite, got {arr.tolist()}: replace nan/inf with a number")
    if np.any(arr < 0):
        raise ValueError(f"weights must be >= 0, got {arr.tolist()}: use 0 to disable a teacher")
    if not arr.sum() > 0:
        raise ValueError(f"weights sum to {arr.sum()}: give at least one teacher a positive weight")
    return CategoricalSampler(arr / arr.sum(), seed, kind="weights", meta={"weights": arr.tolist()})


def from_metrics(
    metrics: Sequence[float],
    seed: int,
    temperature: float = 0.05,
    higher_is_better: bool = True,
    *,
    kind: str = "metrics",
) -> CategoricalSampler:
    """Rank teachers by a metric: ``p = softmax(metric / temperature)``.

    Serves both teacher-rank (each teacher's validation metric) and student-rank (the metric of a pilot
    student distilled from each teacher). With the default temperature 0.05 on metrics in ``[0, 1]``, a
    5-point accuracy gap is a probability ratio of ``e``.

    Args:
        metrics: One metric per teacher, ``[n_teachers]``.
        seed: Non-negative seed.
        temperature: Softmax temperature in metric units, ``> 0``; larger is closer to uniform.
        higher_is_better: ``False`` for losses / error rates (the metric is negated).
        kind: Name for run records (``"teacher-rank"`` / ``"student-rank"``).
    """
    arr = np.asarray(metrics, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"metrics must be a non-empty 1-D sequence, got shape {arr.shape}")
    bad = [i for i, m in enumerate(arr) if not np.isfinite(m)]
    if bad:
        raise ValueError(f"metrics of teachers {bad} are not finite ({arr.tolist()}): re-run their evaluation")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    logits = (arr if higher_is_better else -arr) / temperature
    probs = np.exp(logits - logits.max())
    meta = {"metrics": arr.tolist(), "temperature": float(temperature), "higher_is_better": higher_is_better}
    return CategoricalSampler(probs / probs.sum(), seed, kind=kind, meta=meta)


def describe(sampler: Sampler) -> dict[str, Any]:
    """JSON-ready summary for run records: ``{"kind", "probs", ...state}``."""
    state = sampler.state_dict()
    extra = {k: v for k, v in state.items() if k not in ("kind", "probs")}
    return {"kind": sampler.kind, "probs": [float(p) for p in sampler.probs()], **extra}
