"""What every teacher sampler shares: the `Sampler` interface and the draw keyed on ``(seed, step)``.

Draws are keyed on ``(seed, step)`` instead of a running RNG so that every DDP rank and a resumed run pick
the same teacher at the same step without saving RNG state. This module sits below both `sampling`
(fixed distributions) and `learned` (the online one), so neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


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
