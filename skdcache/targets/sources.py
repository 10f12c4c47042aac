"""Which teachers a step distils from, and where their targets come from.

`TeacherDraws` decides once per step which teachers it uses (a `TeacherChoice`); a `TargetSource` turns rows
and a choice into one `Targets` per chosen teacher. The cache (`CachedTargets`) and live teachers
(`skdcache.targets.live.LiveTargets`) implement the same method, so the loop and the loss never ask where targets
came from and "online equals cache" holds by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.sampling.base import Sampler
from skdcache.sampling.routing import draw_rows
from skdcache.targets.row_targets import merge_rows


@dataclass(frozen=True)
class TeacherChoice:
    """The teachers one optimizer step distils from: none (labels only), one, or all of them (average).

    Per-row routing sets `per_row` (the teacher of each batch row, -1: none) and `teachers` to those used;
    per-row weighting sets `weights` (one tuple per batch row, one weight per teacher) and every teacher.
    """

    teachers: tuple[int, ...] = ()
    per_row: tuple[int, ...] | None = None
    weights: tuple[tuple[float, ...], ...] | None = None

    @property
    def single(self) -> int | None:
        """The index of the one teacher of the whole step, or None when it uses none, several, or one per row."""
        return self.teachers[0] if len(self.teachers) == 1 and self.per_row is None else None


class TargetSource(Protocol):
    """Teacher targets for a batch of rows; one `Targets` per chosen teacher, in the choice's order."""

    read_ahead: bool  # may DataLoader workers read targets ahead of the loop (cache reads: yes; live models: no)

    def targets(self, rows: np.ndarray, choice: TeacherChoice) -> list[Targets]: ...


class CachedTargets:
    """Targets read from teacher caches. Holds paths only, so DataLoader workers can carry it and read ahead."""

    read_ahead = True

    def __init__(self, paths: list[str]):
        self.paths = paths
        self._open: dict[int, TeacherCache] = {}

    def cache(self, teacher: int) -> TeacherCache:
        if teacher not in self._open:  # opened lazily: each worker process gets its own handles
            self._open[teacher] = TeacherCache(self.paths[teacher])
        return self._open[teacher]

    def targets(self, rows: np.ndarray, choice: TeacherChoice) -> list[Targets]:
        if choice.per_row is not None:  # each teacher reads only its own rows: one read per row in all
            per_row = np.asarray(choice.per_row)
            parts = [(np.flatnonzero(per_row == t), t) for t in choice.teachers]
            return [merge_rows([(w, self.cache(t).read(rows[w])) for w, t in parts], len(rows))]
        out = [self.cache(t).read(rows) for t in choice.teachers]
        if choice.weights is not None:  # [B, K] per-row mixture weights travel with each teacher's targets
            weights = torch.tensor(choice.weights, dtype=torch.float32)
            for k, t in enumerate(out):
                t.row_weight = weights[:, k]
        return out

    def __getstate__(self) -> dict:  # open handles stay in the process that opened them
        return {"paths": self.paths, "_open": {}}


class TeacherDraws:
    """The one place that decides which teachers a step uses.

    Every mode but adaptive sampling is a pure function of the step (the sampler seeds each draw with it), so
    loader workers can hold this object and read targets ahead; `learned` and `student-fit` change their
    distribution as the student trains, so their draws are taken in the training process (`fixed` is False).

    Args:
        mode: skd | online (one sampled teacher), single (the only teacher), average (all), none, route (one
            teacher per row), weight (all teachers, per-row weights).
        sampler: the teacher distribution of skd / online.
        n_teachers: team size.
        grad_accum: micro-batches per optimizer step; all of them share the step's teacher.
        table: route / weight: per-row probabilities or weights [n_rows, n_teachers] (`skdcache.sampling.routing`).
        seed: route: the seed of the per-row draws.
        summary: route / weight: how the table was made, for the run record.
    """

    def __init__(
        self,
        mode: str,
        sampler: Sampler | None,
        n_teachers: int,
        grad_accum: int = 1,
        table: np.ndarray | None = None,
        seed: int = 0,
        summary: dict | None = None,
    ):
        self.mode, self.sampler, self.n_teachers, self.grad_accum = mode, sampler, n_teachers, grad_accum
        self.table, self.seed, self.summary = table, seed, summary

    @property
    def fixed(self) -> bool:
        return self.sampler is None or not self.sampler.adaptive

    def __call__(self, micro_step: int, rows: np.ndarray | None = None) -> TeacherChoice:
        """The step's teachers; route and weight need the batch's `rows` (global row ids)."""
        if self.mode == "none" or self.n_teachers == 0:
            return TeacherChoice()
        if self.mode == "route":
            per_row = draw_rows(self.table, self.seed, micro_step // self.grad_accum, rows)  # [B], -1: none
            return TeacherChoice(tuple(sorted(set(per_row.tolist()) - {-1})), tuple(per_row.tolist()))
        if self.mode == "weight":
            weights = tuple(tuple(float(w) for w in self.table[r]) for r in np.asarray(rows).tolist())
            return TeacherChoice(tuple(range(self.n_teachers)), weights=weights)
        if self.mode == "average":
            return TeacherChoice(tuple(range(self.n_teachers)))
        if self.sampler is None:  # single, or a one-teacher online run
            return TeacherChoice((0,))
        return TeacherChoice((self.sampler.sample(micro_step // self.grad_accum),))
