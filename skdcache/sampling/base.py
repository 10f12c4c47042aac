"""What every teacher sampler shares: the `Sampler` interface and the draw keyed on ``(seed, step)``.

Draws are keyed on ``(seed, step)`` instead of a running RNG so that every DDP rank and a resumed run pick
the same teacher at the same step without saving RNG state. Adaptive samplers (learned, student-fit) also
hear from the training loop through one hook, `observe(step, feedback)`, so the loop never asks which kind
of sampler it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


class Feedback(Protocol):
    """What the training loop can tell a sampler about the student; each value is computed only when asked,
    and is rank 0's value on every DDP rank (so every rank keeps one distribution)."""

    teacher: int | None  # the teacher of the step just taken; None when the loop starts (or resumes)

    def heldout_loss(self) -> float:
        """The student's labels-only loss on the held-out rows."""
        ...

    def teacher_losses(self) -> list[float]:
        """The student's KD loss against each teacher's targets on the held-out rows, ``[n_teachers]``."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """Shared interface of all teacher samplers."""

    @property
    def kind(self) -> str:
        """Name used in run records, e.g. ``"uniform"``."""
        ...

    @property
    def adaptive(self) -> bool:
        """True when draws depend on the student (via `observe`): they are then taken in the training process,
        not read ahead by loader workers."""
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

    def observe(self, step: int, feedback: Feedback) -> list[float] | None:
        """Called when the loop starts and after every optimizer step `step`; returns the new distribution
        (rounded, for the step's log) when it changed, else None. Fixed samplers return None."""
        ...


def draw_teacher(probs: np.ndarray, seed: int, step: int) -> int:
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


def check_seed(seed: int) -> int:
    """``default_rng`` rejects negative entropy; fail at construction rather than at the first step."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_kind(expected: str, state: Mapping[str, Any]) -> None:
    """Catch resuming a run with a different sampler kind, which would silently change the teacher order."""
    if state.get("kind") != expected:
        raise ValueError(
            f"state is for sampler kind {state.get('kind')!r} but this sampler is {expected!r}: "
            "resume with the same --sampling"
        )
