"""`online` mode: the same teachers run live every step (the baseline the cache replaces).

Targets are reduced exactly as precompute reduces them and rounded to the cache's float16, so `online` and
`skd` from the cache see the same numbers; only the cost differs (teacher forward + teacher memory).
"""

from __future__ import annotations

import numpy as np
import torch

from skdcache.cache.reader import Targets, TeacherCache
from skdcache.data import TextRows, pad_batch, target_mask, tokenize
from skdcache.precompute import autocast_dtype, label_permutation, target_positions
from skdcache.teachers import TeacherSpec, load_teacher, teacher_forward


class OnlineTeachers:
    """Live teacher models of a team, loaded from the sources recorded in their cache manifests."""

    def __init__(self, caches: list[TeacherCache], rows: TextRows, cfg, device: torch.device):
        self.device, self.specs, self.teachers, self.encoded, self.perms = device, [], [], [], []
        self.full_logits = cfg.full_logits
        for cache in caches:
            t = cache.manifest.teacher
            spec = TeacherSpec(t.name, t.source, t.revision, t.head)
            teacher = load_teacher(spec, device, cfg.trust_remote_code)
            if teacher.weights_hash != t.weights_hash:
                raise RuntimeError(f"teacher {spec.name} at {spec.source} changed since it was cached")
            self.teachers.append(teacher)
            self.specs.append(cache.targets)
            self.encoded.append(tokenize(teacher.tokenizer, rows, cache.targets.max_length))
            perm = label_permutation(teacher.config, rows)
            self.perms.append(perm.to(device) if perm is not None else None)

    def targets(self, index: int, rows: np.ndarray) -> Targets:
        teacher, spec, enc = self.teachers[index], self.specs[index], self.encoded[index]
        ids = [list(enc.ids[r]) for r in rows]
        types = [enc.type_ids[r] for r in rows] if enc.type_ids is not None else None
        mask, counts, positions = None, None, None
        if spec.token_level:
            positions = [target_positions(teacher.tokenizer, spec, enc.ids[r], int(r)) for r in rows]
            mask = target_mask(ids, positions, teacher.tokenizer.mask_token_id if spec.head == "mlm" else None)
            counts = torch.tensor([len(p) for p in positions])
        batch = {k: v.to(self.device) for k, v in pad_batch(ids, types, teacher.tokenizer.pad_token_id).items()}
        out = teacher_forward(
            teacher,
            batch,
            mask.to(self.device) if mask is not None else None,
            spec.top_k,
            spec.hidden_layers,
            spec.hidden_tokens,
            self.perms[index],
            autocast_dtype(self.device),
            full_logits=self.full_logits,
        )

        def fp16(x):  # the cache's rounding, so both paths see identical numbers
            return None if x is None else x.half().float()

        if self.full_logits:  # the uncompressed reference: full-vocabulary float32 logits, no cache rounding
            return Targets(logits=out.logits, token_counts=counts, hidden=fp16(out.hidden))
        return Targets(
            logits=fp16(out.logits),
            topk_logprobs=fp16(out.topk_logprobs),
            topk_ids=None if out.topk_ids is None else out.topk_ids.clone(),  # leave inference mode
            tail_logmass=fp16(out.tail_logmass),
            positions=torch.from_numpy(np.concatenate(positions)) if positions is not None else None,
            token_counts=counts,
            hidden=fp16(out.hidden),
        )
