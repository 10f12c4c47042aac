"""One block of a teacher cache: its rows run through the teacher in length-sorted batches, reduced to
targets and assembled in row order, ready for the writer."""

from __future__ import annotations

import numpy as np
import torch

from skdcache.cache import format as fmt
from skdcache.data import Encoded
from skdcache.device import autocast_dtype
from skdcache.errors import SkdError
from skdcache.reduce import position_uniforms, target_positions, teacher_batch, teacher_forward
from skdcache.teachers import LoadedTeacher


def token_positions(head: str, enc: Encoded, tokenizer, spec: fmt.TargetSpec) -> list[np.ndarray] | None:
    if head not in ("causal", "mlm"):
        return None
    chat = enc.assistant or [None] * len(enc.ids)
    return [target_positions(tokenizer, spec, ids, row, chat[row]) for row, ids in enumerate(enc.ids)]


def length_batches(lengths: np.ndarray, rows: range, batch_size: int) -> list[np.ndarray]:
    """Rows of one block grouped by length (longest first) so padding is rarely computed."""
    idx = np.asarray(rows, dtype=np.int64)
    idx = idx[np.argsort(-lengths[idx], kind="stable")]
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def run_block(
    teacher: LoadedTeacher,
    enc: Encoded,
    positions: list[np.ndarray] | None,
    spec: fmt.TargetSpec,
    rows: range,
    batch_size: int,
    device: torch.device,
    perm: torch.Tensor | None,
    on_batch,
) -> dict[str, np.ndarray]:
    """Every target of one block, assembled in row order (batches run in length order)."""
    lengths = enc.lengths
    block = _BlockBuffer(rows, positions, lengths, spec)
    for batch_rows in length_batches(lengths, rows, batch_size):
        batch_positions = [positions[r] for r in batch_rows] if positions is not None else None
        batch, mask = teacher_batch(teacher, enc, batch_rows, batch_positions, spec.head, device)
        uniforms = None
        if spec.sampled:
            counts = [len(p) for p in batch_positions]
            uniforms = position_uniforms(batch_rows, counts, spec.samples, spec.sample_seed)
        out = teacher_forward(teacher, batch, mask, spec, perm, autocast_dtype(device), uniforms=uniforms)
        block.put(batch_rows, out)
        on_batch(len(batch_rows), int(lengths[batch_rows].sum()))
    if positions is not None:
        block.arrays["positions"] = np.concatenate([positions[r] for r in rows])
    return block.arrays


class _BlockBuffer:
    """Preallocated arrays of one block; each batch's outputs are copied to their rows' places."""

    def __init__(self, rows: range, positions, lengths: np.ndarray, spec: fmt.TargetSpec):
        self.start = rows.start
        self.spec = spec
        self.arrays: dict[str, np.ndarray] = {}
        n = len(rows)
        self.tok_counts = np.array([len(positions[r]) for r in rows]) if positions is not None else None
        self.seq_counts = lengths[rows.start : rows.stop]
        self.tok_offsets = _offsets(self.tok_counts) if self.tok_counts is not None else None
        self.seq_offsets = _offsets(self.seq_counts)
        self.n = n

    def _array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.empty(shape, dtype=dtype)
        return self.arrays[name]

    def put(self, batch_rows: np.ndarray, out) -> None:
        local = batch_rows - self.start
        if out.logits is not None:
            logits = out.logits.cpu().numpy()
            self._array("logits", (self.n, logits.shape[1]), logits.dtype)[local] = logits
        token_parts = ("topk_logprobs", "topk_ids", "tail_logmass", "sample_ids", "sample_counts", "sample_logprobs")
        parts = {n: getattr(out, n).cpu().numpy() for n in token_parts if getattr(out, n) is not None}
        if parts:
            self._scatter(parts, local, self.tok_counts, self.tok_offsets)
        if out.hidden is not None:
            hidden = out.hidden.cpu().numpy()
            if self.spec.hidden_tokens == "cls":
                self._array("hidden", (self.n, *hidden.shape[1:]), hidden.dtype)[local] = hidden
            else:
                self._scatter({"hidden": hidden}, local, self.seq_counts, self.seq_offsets)

    def _scatter(self, parts: dict[str, np.ndarray], local: np.ndarray, counts, offsets) -> None:
        """Copy row-major flattened token outputs of a batch to each row's range in the block."""
        src = 0
        total = int(counts.sum())
        for name, values in parts.items():
            self._array(name, (total, *values.shape[1:]), values.dtype)
        for r in local:
            c = int(counts[r])
            for name, values in parts.items():
                self.arrays[name][offsets[r] : offsets[r] + c] = values[src : src + c]
            src += c


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def check_finite(block: int, data: dict[str, np.ndarray], name: str) -> None:
    for key in ("logits", "topk_logprobs", "sample_logprobs", "hidden"):
        if key in data and not np.isfinite(data[key]).all():
            raise SkdError(f"teacher {name} produced NaN/inf {key} in block {block}; check the model weights/dtype")
