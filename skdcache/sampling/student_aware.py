"""Teacher distributions that look at the student or at training progress, not only at the teachers.

SKDBERT's student-rank needs one pilot run per teacher. These two cost nothing extra:

- ``small-to-large`` (`ScheduleSampler`): a curriculum over the team sorted by size. The probability mass
  slides from the smallest teacher at the first step to the largest at the last, so a small student meets
  the targets it can match first (the capacity-gap argument) and the strongest ones once it has grown.
- ``student-fit`` (`FitSampler`): at the end of warm-up and at every evaluation the trainer measures the KD
  loss of the *current* student against each teacher's cached targets on held-out rows, and the distribution
  becomes ``softmax(-(kd_i - min kd) / (temperature * mean kd))``: teachers the student can follow are drawn
  more often. It reads targets only (no teacher forward), one student forward per teacher per refresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skdcache.sampling.base import Feedback, check_kind, check_seed, draw_teacher


class ScheduleSampler:
    """Mass slides over the size-sorted team: at step s of S the mode sits at rank ``(n - 1) * s / (S - 1)``.

    Between two ranks the mass is split linearly, so every step draws from at most two neighbouring teachers.
    A pure function of the step: loader workers can read ahead, and resume needs no state beyond the seed.

    Args:
        sizes: Each teacher's parameter count (the order the team is indexed in).
        total_steps: Optimizer steps of the run.
        seed: Non-negative seed.
    """

    kind = "small-to-large"
    adaptive = False

    def __init__(self, sizes: Sequence[int], total_steps: int, seed: int) -> None:
        self._rank = np.argsort(np.argsort(np.asarray(sizes), kind="stable"), kind="stable").astype(np.float64)
        self._total = max(1, int(total_steps))
        self._seed = check_seed(seed)

    def probs_at(self, step: int) -> np.ndarray:
        n = self._rank.size
        x = (n - 1) * min(step, self._total - 1) / max(1, self._total - 1)
        p = np.clip(1.0 - np.abs(self._rank - x), 0.0, None)
        return p / p.sum()

    def sample(self, step: int) -> int:
        return draw_teacher(self.probs_at(step), self._seed, step)

    def probs(self) -> np.ndarray:
        """The mean distribution over the run (what run records show)."""
        steps = np.linspace(0, self._total - 1, num=min(self._total, 256)).round().astype(int)
        return np.mean([self.probs_at(int(s)) for s in steps], axis=0)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self._seed, "total_steps": self._total, "rank": self._rank.tolist()}

    def observe(self, step: int, feedback: Feedback) -> None:
        return None  # a schedule of the step alone

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_kind(self.kind, state)
        if list(state["rank"]) != self._rank.tolist() or int(state["total_steps"]) != self._total:
            raise ValueError("state is for another team or step budget: resume with the same teachers and steps")
        self._seed = check_seed(state["seed"])


class FitSampler:
    """Draws teachers the current student follows best (lowest held-out KD loss); uniform until first refreshed.

    Args:
        n: Team size.
        seed: Non-negative seed.
        temperature: Softmax temperature relative to the mean KD loss; 0.25 makes a teacher whose loss is a
            quarter of the mean above the best one e times less likely.
        min_prob: Floor per teacher, so a teacher the student cannot follow yet is still drawn now and then.
        first_refresh: the step after which the distribution is first measured (the end of warm-up).
        refresh_every: then after every multiple of it (the evaluation interval); 0: only once.
    """

    kind = "student-fit"
    adaptive = True  # the distribution depends on the student: draws are taken in the training process

    def __init__(
        self,
        n: int,
        seed: int,
        temperature: float = 0.25,
        min_prob: float = 0.05,
        first_refresh: int = 1,
        refresh_every: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError(f"team size must be >= 1, got {n}")
        if not temperature > 0 or not 0 <= n * min_prob <= 1:
            raise ValueError(f"need temperature > 0 and 0 <= n * min_prob <= 1, got {temperature}, {min_prob}")
        self._seed, self._temperature, self._min_prob = check_seed(seed), float(temperature), float(min_prob)
        self._probs = np.full(n, 1.0 / n)
        self._losses: list[float] | None = None
        self._first, self._every = first_refresh, refresh_every

    def observe(self, step: int, feedback: Feedback) -> list[float] | None:
        """Refresh from the held-out KD losses at the end of warm-up and at every evaluation step."""
        due = step == self._first or (self._every > 0 and step % self._every == 0)
        if feedback.teacher is None or not due:
            return None
        self.refresh(feedback.teacher_losses())
        return [round(float(p), 4) for p in self.probs()]

    def refresh(self, kd_losses: Sequence[float]) -> None:
        """New distribution from each teacher's held-out KD loss against the current student."""
        kd = np.asarray(kd_losses, dtype=np.float64)
        if kd.shape != self._probs.shape or not np.all(np.isfinite(kd)):
            raise ValueError(f"need one finite KD loss per teacher, got {kd.tolist()}")
        scale = self._temperature * max(float(kd.mean()), 1e-12)
        p = np.exp(-(kd - kd.min()) / scale)
        n = kd.size
        self._probs = (1 - n * self._min_prob) * p / p.sum() + self._min_prob
        self._losses = kd.tolist()

    def sample(self, step: int) -> int:
        return draw_teacher(self._probs, self._seed, step)

    def probs(self) -> np.ndarray:
        return self._probs.copy()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self._seed, "probs": self._probs.tolist(), "kd_losses": self._losses}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_kind(self.kind, state)
        probs = np.asarray(state["probs"], dtype=np.float64)
        if probs.shape != self._probs.shape:
            raise ValueError(f"state has {probs.size} teachers, this run {self._probs.size}: resume with the same team")
        self._probs, self._seed, self._losses = probs, check_seed(state["seed"]), state.get("kd_losses")
