"""Batches for training: the student's inputs plus, read ahead, the step's teacher targets.

The batch of every step is a pure function of (seed, step): rows come from a per-epoch permutation and the
teacher from the sampler's draw for that step. So worker processes can read targets ahead of the loop,
a resumed run continues with exactly the batches it would have seen, and every DDP rank agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from skdcache.data.rows import Encoded, mlm_positions, pad_batch, target_mask
from skdcache.targets.sources import TargetSource, TeacherDraws


@dataclass
class StudentInputs:
    """The student's tokenization of the rows and, for token-level heads, where its losses sit."""

    enc: Encoded
    labels: np.ndarray | None  # [n] class ids / floats; None for language modelling
    head: str  # sequence | mlm | causal
    pad_id: int
    mask_id: int | None = None
    special: list[list[int]] | None = None  # mlm: special-token masks per row
    mlm_probability: float = 0.15
    mask_seed: int = 0

    def positions(self, row: int) -> np.ndarray:
        if self.head == "causal" and self.enc.assistant is not None:  # chat: positions predicting assistant tokens
            return np.flatnonzero(self.enc.assistant[row][1:]).astype(np.int64)
        if self.head == "causal":
            return np.arange(len(self.enc.ids[row]), dtype=np.int64)
        return mlm_positions(self.enc.ids[row], self.special[row], self.mlm_probability, self.mask_seed, row)


class StepSchedule:
    """Which rows each global step trains on: epochs of seeded permutations, a fixed batch size."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, rows: np.ndarray | None = None):
        self.rows = np.arange(n_rows) if rows is None else rows
        self.batch_size = min(batch_size, len(self.rows))
        self.seed = seed
        self.steps_per_epoch = len(self.rows) // self.batch_size  # drop the ragged last batch

    def rows_for(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return self.rows[order[i * self.batch_size : (i + 1) * self.batch_size]]


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The entries of a student batch the model's forward takes (not labels, masks of targets or row ids)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def student_batch(inputs: StudentInputs, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Padded student inputs for `rows`; token-level heads get `target_mask` [B, T] and token `labels`."""
    ids = [list(inputs.enc.ids[r]) for r in rows]
    types = [inputs.enc.type_ids[r] for r in rows] if inputs.enc.type_ids is not None else None
    if inputs.head == "sequence":
        batch = pad_batch(ids, types, inputs.pad_id)
        if inputs.labels is not None:
            batch["labels"] = torch.from_numpy(inputs.labels[rows].copy())
        return batch
    positions = [inputs.positions(int(r)) for r in rows]
    token_labels = torch.full((len(rows), max(len(x) for x in ids)), -100, dtype=torch.long)
    for i, pos in enumerate(positions):
        if inputs.head == "mlm":  # the masked tokens themselves
            token_labels[i, pos] = torch.tensor([ids[i][p] for p in pos], dtype=torch.long)
        else:  # causal: position t predicts token t + 1; the last one has no label
            pos = pos[pos < len(ids[i]) - 1]
            token_labels[i, pos] = torch.tensor(ids[i], dtype=torch.long)[pos + 1]
    mask = target_mask(ids, positions, inputs.mask_id if inputs.head == "mlm" else None)  # masks `ids` (MLM)
    batch = pad_batch(ids, types, inputs.pad_id)
    batch["target_mask"] = mask
    batch["token_labels"] = token_labels
    return batch


class StepBatches(Dataset):
    """Map-style dataset over micro-steps: item `i` is that step's student batch, plus its teachers' targets
    when the loader reads them ahead.

    Args:
        part: (rank, world size); each rank gets its slice of every global batch.
        read_ahead: (draws, source) to read each step's targets in the loader (its workers), or None when the
            training process reads them (`learned` sampling, live teachers, labels only).
    """

    def __init__(
        self,
        inputs: StudentInputs,
        schedule: StepSchedule,
        first_step: int,
        last_step: int,
        part: tuple[int, int] = (0, 1),
        read_ahead: tuple[TeacherDraws, TargetSource] | None = None,
    ):
        self.inputs, self.schedule = inputs, schedule
        self.first_step, self.last_step = first_step, last_step
        self.rank, self.world = part
        self.read_ahead = read_ahead

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step)

    def __getitem__(self, i: int) -> dict:
        step = self.first_step + i
        rows = self.schedule.rows_for(step)
        if self.world > 1:  # DDP: this rank's contiguous slice of the global batch; it reads only those targets
            rows = np.array_split(rows, self.world)[self.rank]
        batch = student_batch(self.inputs, rows)
        batch["step"], batch["rows"] = step, torch.from_numpy(rows)
        if self.read_ahead is not None:  # the step's draw travels with its batch: the loop does not draw again
            draws, source = self.read_ahead
            batch["choice"] = draws(step, rows)
            batch["targets"] = source.targets(rows, batch["choice"])
        return batch


def step_loader(dataset: StepBatches, num_workers: int, seed: int = 0) -> DataLoader:
    """One item per step (the batch is built inside the item), read ahead by worker processes.

    The loader gets its own generator so that creating it does not consume the global torch RNG (dropout
    masks after a resume must be the ones an uninterrupted run would draw).
    """
    return DataLoader(
        dataset,
        generator=torch.Generator().manual_seed(seed),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
