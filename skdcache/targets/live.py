"""Live teachers (`--mode online`): the same targets as the cache, computed every step (the baseline it replaces).

Targets are reduced exactly as precompute reduces them and rounded to the cache's float16, so live and cached
sources give the same numbers; only the cost differs (teacher forward + teacher memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from skdcache.cache import kinds
from skdcache.cache.reader import Targets, TeacherCache
from skdcache.data.rows import TextRows, tokenize
from skdcache.device import autocast_dtype
from skdcache.errors import SkdError
from skdcache.targets.sources import TeacherChoice
from skdcache.teacher.load import TeacherSpec, load_teacher
from skdcache.teacher.reduce import (
    label_permutation,
    position_uniforms,
    target_positions,
    teacher_batch,
    teacher_forward,
)


def find_teacher(cache: TeacherCache, moved: dict[str, str] | None = None) -> str:
    """Where a cached teacher's model is now: the path given for it, the absolute path recorded at precompute,
    or the source as typed (a hub id, or a path relative to where precompute ran)."""
    t = cache.manifest.teacher
    if moved and t.name in moved:
        return moved[t.name]
    if t.location and Path(t.location).is_dir():
        return t.location
    if t.location and not Path(t.source).expanduser().is_dir():  # a local teacher that is no longer there
        raise SkdError(
            f"teacher {t.name} was cached from {t.location}, which no longer exists; "
            f"pass --teacher-path {t.name}=PATH (its current directory)"
        )
    return t.source


class LiveTargets:
    """A `TargetSource` that runs the team's models, loaded from the locations recorded in their manifests.

    Args:
        caches: the team's caches (what to compute, and the weights each model must still have).
        rows: the training rows, tokenized once per teacher.
        full_logits: token heads: return the full-vocabulary float32 logits instead of top-k (the reference
            the cache approximates).
        moved: NAME -> PATH for teachers whose model is no longer where precompute found it.
    """

    read_ahead = False  # the models live in the training process (and on its device)

    def __init__(
        self,
        caches: list[TeacherCache],
        rows: TextRows,
        device: torch.device,
        full_logits: bool = False,
        trust_remote_code: bool = False,
        moved: dict[str, str] | None = None,
    ):
        self.device, self.full_logits = device, full_logits
        self.specs, self.teachers, self.encoded, self.perms = [], [], [], []
        for cache in caches:
            t = cache.manifest.teacher
            spec = TeacherSpec(t.name, find_teacher(cache, moved), t.revision, t.head)
            teacher = load_teacher(spec, device, trust_remote_code)
            if teacher.weights_hash != t.weights_hash:
                raise SkdError(
                    f"teacher {spec.name} at {spec.source} changed since it was cached; "
                    f"point at the cached weights with --teacher-path {spec.name}=PATH"
                )
            self.teachers.append(teacher)
            self.specs.append(cache.targets)
            self.encoded.append(tokenize(teacher.tokenizer, rows, cache.targets.max_length))
            perm = label_permutation(teacher.config, rows)
            self.perms.append(perm.to(device) if perm is not None else None)

    def targets(self, rows: np.ndarray, choice: TeacherChoice) -> list[Targets]:
        return [self._one(t, rows) for t in choice.teachers]

    def _one(self, index: int, rows: np.ndarray) -> Targets:
        teacher, spec, enc = self.teachers[index], self.specs[index], self.encoded[index]
        positions, counts, uniforms = None, None, None
        if spec.token_level:
            chat = enc.assistant
            positions = [
                target_positions(teacher.tokenizer, spec, enc.ids[r], int(r), chat[r] if chat else None) for r in rows
            ]
            counts = torch.tensor([len(p) for p in positions])
            if spec.sampled:  # the same draws precompute made: seeded by (sample_seed, row)
                uniforms = position_uniforms(rows, counts.tolist(), spec.samples, spec.sample_seed)
        batch, mask = teacher_batch(teacher, enc, rows, positions, spec.head, self.device)
        amp = autocast_dtype(self.device)
        perm = self.perms[index]
        out = teacher_forward(teacher, batch, mask, spec, perm, amp, full_logits=self.full_logits, uniforms=uniforms)
        if self.full_logits:  # the uncompressed reference: full-vocabulary float32 logits, no cache rounding
            return Targets(logits=out.logits, token_counts=counts, hidden=fp16(out.hidden))
        fields = {name: value for name in kinds.FIELDS if (value := getattr(out, name)) is not None}
        # exact fields (ids, counts) leave inference mode as they are; values take the cache's float16 rounding
        copied = {name: v.clone() if kinds.FIELDS[name].exact else fp16(v) for name, v in fields.items()}
        if positions is not None:
            copied["positions"] = torch.from_numpy(np.concatenate(positions))
        return Targets(**copied, token_counts=counts)


def fp16(x: torch.Tensor | None) -> torch.Tensor | None:
    """The cache's rounding (float16, back to float32), so cached and live targets are the same numbers."""
    return None if x is None else x.half().float()
