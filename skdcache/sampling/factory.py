"""The one place `--sampling` becomes a sampler: every teacher distribution the tool offers, by name.

`skdcache train`, its pilots and the Trainer integration all build their sampler here, so the same flags give
the same draws everywhere. What a kind needs from outside (teacher metrics, pilot metrics, sizes, the step
budget, when to refresh) is passed in; a kind missing what it needs is refused in one line naming it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from skdcache.errors import SkdError
from skdcache.sampling.base import Sampler
from skdcache.sampling.categorical import from_metrics, from_weights, uniform
from skdcache.sampling.learned import LearnedSampler
from skdcache.sampling.student_aware import FitSampler, ScheduleSampler

KINDS = ("uniform", "teacher-rank", "student-rank", "weights", "learned", "small-to-large", "student-fit")
ADAPTIVE = ("learned", "student-fit")  # observe the student on held-out rows the run never trains on
LOOP_BOUND = (*ADAPTIVE, "small-to-large")  # need the training loop (its step budget or held-out rows)


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
    sizes: Sequence[int] | None = None,
    total_steps: int | None = None,
    refresh: tuple[int, int] | None = None,
) -> Sampler:
    """A sampler from `--sampling` options; each option is read only by the kinds that use it.

    Args:
        kind: One of `KINDS`, or ``weights=0.2,0.3,0.5``.
        n_teachers: Team size.
        seed: Non-negative seed.
        metrics: One metric per teacher, ``[n_teachers]`` (teacher-rank, student-rank).
        weights: One weight per teacher, ``[n_teachers]`` (weights).
        temperature: Metric softmax temperature (teacher-rank, student-rank).
        higher_is_better: Metric direction (teacher-rank, student-rank).
        lr, min_prob: Logit step size and probability floor (learned).
        sizes: Parameter count per teacher (small-to-large), with ``total_steps`` its step budget.
        refresh: (first step, every) of student-fit's held-out measurements (end of warm-up, eval interval).
    """
    if kind.startswith("weights="):
        kind, weights = "weights", _parse_weights(kind)
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
        return LearnedSampler(team_limit(kind, n_teachers, LearnedSampler), seed, lr=lr, min_prob=min_prob)
    if kind == "small-to-large":
        if sizes is None or total_steps is None:
            raise ValueError("sampler 'small-to-large' needs the teachers' sizes and the run's step budget")
        return ScheduleSampler(sizes, total_steps, seed)
    if kind == "student-fit":
        first, every = refresh if refresh is not None else (1, 0)
        return FitSampler(team_limit(kind, n_teachers, FitSampler), seed, first_refresh=first, refresh_every=every)
    raise ValueError(f"unknown sampler kind {kind!r}: choose one of {', '.join(KINDS)}")


def _parse_weights(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split("=", 1)[1].split(",")]
    except ValueError:
        raise SkdError(f"--sampling {text}: write weights=0.2,0.3,0.5 (one number per teacher)") from None


def team_limit(kind: str, n: int, sampler: type) -> int:
    """`n`, or a one-line refusal: these samplers keep a floor `min_prob` per teacher, so `n * min_prob <= 1`."""
    floor = inspect.signature(sampler).parameters["min_prob"].default
    most = int(1 / floor + 1e-9)
    if n > most:
        raise SkdError(
            f"--sampling {kind} draws every teacher at least {floor:.0%} of the time, so it takes at most {most} "
            f"teachers, not {n}; pass --teachers with {most} or fewer, or another --sampling"
        )
    return n
