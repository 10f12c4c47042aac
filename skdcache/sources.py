"""Which teachers a step distils from, and where their targets come from.

`TeacherDraws` decides once per step which teachers it uses (a `TeacherChoice`); a `TargetSource` turns rows
and a choice into one `Targets` per chosen teacher. The cache (`CachedTargets`) and live teachers
(`skdcache.live.LiveTargets`) implement the same method, so the loop and the loss never ask where targets
came from and "online equals cache" holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.sampling import Sampler


@dataclass(frozen=True)
class TeacherChoice:
    """The teachers one optimizer step distils from: none (labels only), one, or all of them (average)."""

    teachers: tuple[int, ...] = ()

    @property
    def single(self) -> int | None:
        """The index of the one teacher drawn, or None when the step uses none or several."""
        return self.teachers[0] if len(self.teachers) == 1 else None


class TargetSource(Protocol):
    """Teacher targets for a batch of rows; one `Targets` per chosen teacher, in the choice's order."""

    def targets(self, rows: np.ndarray, choice: TeacherChoice) -> list[Targets]: ...


class CachedTargets:
    """Targets read from teacher caches. Holds paths only, so DataLoader workers can carry it and read ahead."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self._open: dict[int, TeacherCache] = {}

    def cache(self, teacher: int) -> TeacherCache:
        if teacher not in self._open:  # opened lazily: each worker process gets its own handles
            self._open[teacher] = TeacherCache(self.paths[teacher])
        return self._open[teacher]

    def targets(self, rows: np.ndarray, choice: TeacherChoice) -> list[Targets]:
        return [self.cache(t).read(rows) for t in choice.teachers]

    def __getstate__(self) -> dict:  # open handles stay in the process that opened them
        return {"paths": self.paths, "_open": {}}


class TeacherDraws:
    """The one place that decides which teachers a step uses.

    Every mode but adaptive sampling is a pure function of the step (the sampler seeds each draw with it), so
    loader workers can hold this object and read targets ahead; `learned` and `student-fit` change their
    distribution as the student trains, so their draws are taken in the training process (`fixed` is False).

    Args:
        mode: skd | online (one sampled teacher), single (the only teacher), average (all), none.
        sampler: the teacher distribution of skd / online.
        n_teachers: team size.
        grad_accum: micro-batches per optimizer step; all of them share the step's teacher.
    """

    def __init__(self, mode: str, sampler: Sampler | None, n_teachers: int, grad_accum: int = 1):
        self.mode, self.sampler, self.n_teachers, self.grad_accum = mode, sampler, n_teachers, grad_accum

    @property
    def fixed(self) -> bool:
        return not getattr(self.sampler, "adaptive", False)

    def __call__(self, micro_step: int) -> TeacherChoice:
        if self.mode == "none" or self.n_teachers == 0:
            return TeacherChoice()
        if self.mode == "average":
            return TeacherChoice(tuple(range(self.n_teachers)))
        if self.sampler is None:  # single, or a one-teacher online run
            return TeacherChoice((0,))
        return TeacherChoice((self.sampler.sample(micro_step // self.grad_accum),))
