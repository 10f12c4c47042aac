"""Teacher-sampling distributions for stochastic knowledge distillation.

At every training step one teacher index is drawn from a categorical distribution. Draws are keyed on
``(seed, step)`` instead of a running RNG so that every DDP rank and a resumed run pick the same teacher
at the same step without saving RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

KINDS = ("uniform", "teacher-rank", "student-rank", "weights", "learned")


@runtime_checkable
class Sampler(Protocol):
    """Shared interface of all teacher samplers."""

    @property
    def kind(self) -> str:
        """Name used in run records, e.g. ``"uniform"``."""
        ...

    def sample(self, step: int) -> int:
        """Teacher index for a training step (deterministic in ``(seed, step)`` and the current probs)."""
        ...

    def probs(self) -> np.ndarray:
        """Current distribution over teachers, ``[n_teachers]``, sums to 1."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        ...


def _draw(probs: np.ndarray, seed: int, step: int) -> int:
    """Inverse-CDF draw from a fresh generator keyed on ``(seed, step)``.

    ``side="right"`` skips zero-probability teachers, and normalising the CDF by its last entry keeps the
    index in range despite float rounding.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    cdf = np.cumsum(probs)
    cdf = cdf / cdf[-1]
    u = np.random.default_rng([seed, step]).random()
    return int(np.searchsorted(cdf, u, side="right"))


def _check_seed(seed: int) -> int:
    """``default_rng`` rejects negative entropy; fail at construction rather than at the first step."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class CategoricalSampler:
    """A fixed categorical distribution (uniform, custom weights, or metric-ranked).

    Args:
        probs: Probabilities, ``[n_teachers]``; must be finite, non-negative and sum to 1.
        seed: Non-negative seed shared by all ranks.
        kind: Name for run records.
        meta: JSON-ready provenance (e.g. the metrics and temperature) copied into the state dict.
    """

    def __init__(self, probs: Sequence[float], seed: int, kind: str, meta: Mapping[str, Any] | None = None) -> None:
        self._probs = _check_probs(probs)
        self._seed = _check_seed(seed)
        self._kind = kind
        self._meta = dict(meta or {})

    @property
    def kind(self) -> str:
        return self._kind

    def sample(self, step: int) -> int:
        return _draw(self._probs, self._seed, step)

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
        _check_kind(self._kind, state)
        probs = _check_probs(state["probs"])
        if probs.shape != self._probs.shape:
            raise ValueError(
                f"state has {probs.size} teachers but this sampler has {self._probs.size}: "
                "resume with the same teacher team"
            )
        self._probs = probs
        self._seed = _check_seed(state["seed"])
        self._meta = dict(state.get("meta", {}))


def _check_probs(probs: Sequence[float]) -> np.ndarray:
    """Validate an explicit distribution; tolerate float rounding in the sum."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or not math.isclose(arr.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"probs must be finite, non-negative and sum to 1, got {arr.tolist()}")
    return arr / arr.sum()


def _check_kind(expected: str, state: Mapping[str, Any]) -> None:
    """Catch resuming a run with a different sampler kind, which would silently change the teacher order."""
    if state.get("kind") != expected:
        raise ValueError(
            f"state is for sampler kind {state.get('kind')!r} but this sampler is {expected!r}: "
            "resume with the same --sampling"
        )


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


class LearnedSampler:
    """AutoSKD-style online learning of the teacher distribution.

    Keeps logits ``theta`` (0 at start, i.e. uniform). After each step the trainer reports a reward for the
    teacher it used, e.g. the drop in a held-out batch loss caused by that step (computed by the trainer,
    and identical on every DDP rank, so all ranks keep the same distribution). Only the sampled teacher's
    logit moves: ``theta[t] += lr * (reward - baseline) / scale``. ``baseline`` is an EMA of past rewards
    (initialised at the first reward) that turns raw rewards into advantages; ``scale`` is the EMA root
    mean square of those advantages, so ``lr`` is in units of "typical advantages" and the same ``lr``
    works whether a loss drop is 1e-4 or 1 (raw held-out loss drops are ~1e-4, which left an unscaled
    sampler uniform). Because of the softmax, raising one logit lowers every other teacher's probability.

    ``probs()`` mixes the softmax with uniform, ``(1 - n * min_prob) * softmax(theta) + min_prob``, so every
    teacher keeps at least ``min_prob`` and can still recover if it becomes useful later.

    Args:
        n: Team size.
        seed: Non-negative seed.
        lr: Step size of the logit update.
        baseline_momentum: EMA factor of the reward baseline, in ``[0, 1)``.
        min_prob: Probability floor per teacher, ``0 <= n * min_prob <= 1``.
    """

    def __init__(
        self, n: int, seed: int, lr: float = 0.1, baseline_momentum: float = 0.9, min_prob: float = 0.02
    ) -> None:
        if n < 1:
            raise ValueError(f"team size must be >= 1, got {n}")
        self._seed = _check_seed(seed)
        self._theta = np.zeros(n, dtype=np.float64)
        self._baseline: float | None = None
        self._scale_sq: float | None = None
        self._steps = 0
        self._history: list[list[float]] = []
        self._set_hyper(lr, baseline_momentum, min_prob)

    def _set_hyper(self, lr: float, baseline_momentum: float, min_prob: float) -> None:
        n = self._theta.size
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        if not 0 <= baseline_momentum < 1:
            raise ValueError(f"baseline_momentum must be in [0, 1), got {baseline_momentum}")
        if not (min_prob >= 0 and n * min_prob <= 1 + 1e-12):
            raise ValueError(f"min_prob {min_prob} with {n} teachers needs 0 <= n * min_prob <= 1: lower min_prob")
        self._lr, self._momentum, self._min_prob = float(lr), float(baseline_momentum), float(min_prob)

    @property
    def kind(self) -> str:
        return "learned"

    def sample(self, step: int) -> int:
        return _draw(self.probs(), self._seed, step)

    def probs(self) -> np.ndarray:
        soft = np.exp(self._theta - self._theta.max())
        soft /= soft.sum()
        n = self._theta.size
        return (1.0 - n * self._min_prob) * soft + self._min_prob

    def update(self, teacher: int, reward: float) -> None:
        """Move the sampled teacher's logit by its advantage, then update the baseline.

        Args:
            teacher: Index of the teacher used at this step.
            reward: Training-loop reward for that step (higher is better), finite.
        """
        if not 0 <= teacher < self._theta.size:
            raise ValueError(f"teacher index {teacher} out of range for {self._theta.size} teachers")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}: skip the update for a diverged step")
        reward = float(reward)
        if self._baseline is None:
            self._baseline = reward
        advantage = reward - self._baseline
        if advantage != 0.0:
            sq, m = advantage * advantage, self._momentum
            self._scale_sq = sq if self._scale_sq is None else m * self._scale_sq + (1 - m) * sq
            self._theta[teacher] += self._lr * advantage / math.sqrt(self._scale_sq)
        self._baseline = self._momentum * self._baseline + (1.0 - self._momentum) * reward
        self._steps += 1
        self._history.append(self.probs().tolist())

    def history(self) -> list[list[float]]:
        """Probs after each update since construction or the last load (not checkpointed, to stay small)."""
        return [list(p) for p in self._history]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "learned",
            "seed": self._seed,
            "theta": self._theta.tolist(),
            "baseline": self._baseline,
            "scale_sq": self._scale_sq,
            "steps": self._steps,
            "lr": self._lr,
            "baseline_momentum": self._momentum,
            "min_prob": self._min_prob,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore theta, baseline, step count, seed and hyper-parameters; clears the history."""
        _check_kind("learned", state)
        theta = np.asarray(state["theta"], dtype=np.float64)
        if theta.shape != self._theta.shape or not np.all(np.isfinite(theta)):
            raise ValueError(
                f"state theta {state['theta']} does not fit {self._theta.size} teachers: "
                "resume with the same teacher team"
            )
        self._theta = theta
        self._set_hyper(state["lr"], state["baseline_momentum"], state["min_prob"])
        self._seed = _check_seed(state["seed"])
        baseline = state["baseline"]
        self._baseline = None if baseline is None else float(baseline)
        if "scale_sq" not in state:
            raise ValueError(
                "checkpoint is from the first learned sampler (unscaled rewards, another meaning of lr): "
                "restart this run without --resume"
            )
        scale_sq = state["scale_sq"]
        self._scale_sq = None if scale_sq is None else float(scale_sq)
        self._steps = int(state["steps"])
        self._history = []


def build_sampler(
    kind: str,
    n_teachers: int,
    seed: int,
    metrics: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    temperature: float = 0.05,
    *,
    higher_is_better: bool = True,
    lr: float = 0.1,
    min_prob: float = 0.02,
) -> Sampler:
    """Build a sampler from CLI-style options.

    ``metrics`` is used only by the rank kinds, ``weights`` only by ``weights``, and ``lr`` / ``min_prob``
    only by ``learned``; the rest is ignored so callers can pass every option unconditionally.

    Args:
        kind: One of ``uniform``, ``teacher-rank``, ``student-rank``, ``weights``, ``learned``.
        n_teachers: Team size.
        seed: Non-negative seed.
        metrics: One metric per teacher, ``[n_teachers]`` (teacher-rank, student-rank).
        weights: One weight per teacher, ``[n_teachers]`` (weights).
        temperature: Metric softmax temperature (teacher-rank, student-rank).
        higher_is_better: Metric direction (teacher-rank, student-rank).
        lr: Logit step size (learned).
        min_prob: Probability floor (learned).
    """
    if kind == "uniform":
        return uniform(n_teachers, seed)
    if kind in ("teacher-rank", "student-rank"):
        if metrics is None:
            raise ValueError(f"sampler {kind!r} needs one metric per teacher: pass metrics (e.g. from the run records)")
        if len(metrics) != n_teachers:
            raise ValueError(f"got {len(metrics)} metrics for {n_teachers} teachers: give one metric per teacher")
        return from_metrics(metrics, seed, temperature, higher_is_better, kind=kind)
    if kind == "weights":
        if weights is None:
            raise ValueError("sampler 'weights' needs weights: pass e.g. weights=0.2,0.3,0.5")
        return from_weights(weights, n_teachers, seed)
    if kind == "learned":
        return LearnedSampler(n_teachers, seed, lr=lr, min_prob=min_prob)
    raise ValueError(f"unknown sampler kind {kind!r}: choose one of {', '.join(KINDS)}")


def describe(sampler: Sampler) -> dict[str, Any]:
    """JSON-ready summary for run records: ``{"kind", "probs", ...state}``."""
    state = sampler.state_dict()
    extra = {k: v for k, v in state.items() if k not in ("kind", "probs")}
    return {"kind": sampler.kind, "probs": [float(p) for p in sampler.probs()], **extra}
