"""The learned teacher distribution (`--sampling learned`): AutoSKD-style, updated from the training loop.

Apart from the fixed distributions in `categorical` because it is the only sampler with an update rule and
hyper-parameters of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from skdcache.sampling.base import Feedback, check_kind, check_seed, draw_teacher


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

    adaptive = True  # the distribution follows the student: draws are taken in the training process

    def __init__(
        self, n: int, seed: int, lr: float = 0.1, baseline_momentum: float = 0.9, min_prob: float = 0.02
    ) -> None:
        if n < 1:
            raise ValueError(f"team size must be >= 1, got {n}")
        self._seed = check_seed(seed)
        self._theta = np.zeros(n, dtype=np.float64)
        self._baseline: float | None = None
        self._scale_sq: float | None = None
        self._steps = 0
        self._history: list[list[float]] = []
        self._heldout: float | None = None  # the held-out loss before the current step (not state: re-measured)
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
        return draw_teacher(self.probs(), self._seed, step)

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

    def observe(self, step: int, feedback: Feedback) -> list[float] | None:
        """Reward the step's teacher by the drop of the held-out labels-only loss it caused."""
        before, self._heldout = self._heldout, feedback.heldout_loss()
        if feedback.teacher is None or before is None:  # the loop starts: measure the loss the first step lowers
            return None
        self.update(feedback.teacher, before - self._heldout)
        return [round(float(p), 4) for p in self.probs()]

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
        check_kind("learned", state)
        theta = np.asarray(state["theta"], dtype=np.float64)
        if theta.shape != self._theta.shape or not np.all(np.isfinite(theta)):
            raise ValueError(
                f"state theta {state['theta']} does not fit {self._theta.size} teachers: "
                "resume with the same teacher team"
            )
        self._theta = theta
        self._set_hyper(state["lr"], state["baseline_momentum"], state["min_prob"])
        self._seed = check_seed(state["seed"])
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
