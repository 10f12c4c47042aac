"""One block of a teacher cache: its rows run through the teacher in length-sorted batches, reduced to
targets and assembled in row order, ready for the writer."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from skdcache.cache import format as fmt
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.data.rows import Encoded
from skdcache.device import autocast_dtype
from skdcache.distributed import rank_and_size
from skdcache.errors import SkdError
from skdcache.stages import StageClock
from skdcache.teacher.load import LoadedTeacher
from skdcache.teacher.reduce import position_uniforms, target_positions, teacher_batch, teacher_forward


def token_positions(head: str, enc: Encoded, tokenizer, spec: TargetSpec) -> list[np.ndarray] | None:
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
    spec: TargetSpec,
    layout: fmt.Layout,
    rows: range,
    batch_size: int,
    device: torch.device,
    perm: torch.Tensor | None,
    on_batch,
    clock: StageClock | None = None,
) -> dict[str, np.ndarray]:
    """Every target of one block in its stored dtype, assembled in row order (batches run in length order).

    Targets are cast to the stored dtype on the teacher's device, so only the stored bytes cross to the host.
    """
    clock = clock or StageClock()
    lengths = enc.lengths
    block = _BlockBuffer(rows, positions, lengths, layout)
    for batch_rows in length_batches(lengths, rows, batch_size):
        batch_positions = [positions[r] for r in batch_rows] if positions is not None else None
        batch, mask = teacher_batch(teacher, enc, batch_rows, batch_positions, spec.head, device)
        uniforms = None
        if spec.sampled:
            counts = [len(p) for p in batch_positions]
            uniforms = position_uniforms(batch_rows, counts, spec.samples, spec.sample_seed)
        out = teacher_forward(teacher, batch, mask, spec, perm, autocast_dtype(device), uniforms=uniforms, clock=clock)
        with clock.stage("reduce"):
            stored = {name: _stored(value, layout, name) for name, value in vars(out).items() if value is not None}
        with clock.stage("d2h"):
            host = {name: value.cpu().numpy() for name, value in stored.items()}
        with clock.stage("assemble"):
            block.put(batch_rows, host)
        on_batch(len(batch_rows), int(lengths[batch_rows].sum()))
    if positions is not None:
        block.arrays["positions"] = np.concatenate([positions[r] for r in rows]).astype(
            layout.arrays["positions"].dtype
        )
    return block.arrays


_TORCH_DTYPES = {"float16": torch.float16, "uint8": torch.uint8, "uint16": torch.uint16, "uint32": torch.uint32}


def _stored(value: torch.Tensor, layout: fmt.Layout, name: str) -> torch.Tensor:
    """`value` in the dtype its array stores (the cast numpy would do on the host, done where `value` is)."""
    return value.to(_TORCH_DTYPES[layout.arrays[name].dtype])


class _BlockBuffer:
    """Preallocated arrays of one block; each batch's outputs are copied to their rows' places."""

    def __init__(self, rows: range, positions, lengths: np.ndarray, layout: fmt.Layout):
        self.start = rows.start
        self.layout = layout
        self.n = len(rows)
        self.arrays: dict[str, np.ndarray] = {}
        tok_counts = np.array([len(positions[r]) for r in rows], dtype=np.int64) if positions is not None else None
        self.counts = {"token_index": tok_counts, "hidden_index": lengths[rows.start : rows.stop].astype(np.int64)}

    def put(self, batch_rows: np.ndarray, parts: dict[str, np.ndarray]) -> None:
        """Copy one batch's outputs (row arrays [B, ...] in batch order; token arrays [n, ...] flattened over the
        batch in batch order) to their rows' places, each array in one vectorised copy."""
        local = batch_rows - self.start
        for name, values in parts.items():
            index = fmt.index_array(name, self.layout.arrays)
            counts = self.counts[index] if index is not None else None
            if name not in self.arrays:
                n = self.n if counts is None else int(counts.sum())
                self.arrays[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
            self.arrays[name][local if counts is None else _token_places(counts, local)] = values


def _token_places(counts: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Places in the block's token array of a batch's tokens, flattened in batch order.

    Args:
        counts: [rows_in_block] tokens of each row; `local`: [B] the batch's rows (block-local).
    Returns:
        [sum(counts[local])] int64: row r's j-th token goes to offset(r) + j.
    """
    offsets = np.cumsum(counts) - counts  # [rows_in_block] start of each row
    mine = counts[local]
    src_starts = np.cumsum(mine) - mine
    return np.repeat(offsets[local] - src_starts, mine) + np.arange(int(mine.sum()))


def capture(blocks: list[int], compute, writer: CacheWriter, name: str, in_flight: int = 2) -> None:
    """Compute `blocks` one after another on this thread while earlier ones are checked, encoded and written.

    The block thread hands each block's shards to the writer's encode pool; at most `in_flight` computed
    blocks wait for the disk (backpressure bounds memory), so the teacher waits only when the disk is the limit.
    A writer error is raised here, at the next block or at the end.

    Args:
        compute: block -> its arrays in stored dtype (`run_block`).
    """

    def check_and_write(block: int, data: dict[str, np.ndarray]) -> None:
        with writer.clock.stage("check"):
            check_finite(block, data, name)
        writer.write_block(block, data)

    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skdcache-writer") as pool:
        for block in blocks:
            pending.append(pool.submit(check_and_write, block, compute(block)))
            while len(pending) > in_flight:
                pending.pop(0).result()
        for f in pending:
            f.result()


def check_finite(block: int, data: dict[str, np.ndarray], name: str) -> None:
    """Refuse NaN / inf in the stored float16 arrays: exponent bits all ones, tested a cache-sized piece at a
    time (about 10x faster than np.isfinite over the whole block, which allocates two block-sized masks)."""
    for key in ("logits", "topk_logprobs", "sample_logprobs", "hidden"):
        if key in data and not _finite_fp16(data[key]):
            raise SkdError(f"teacher {name} produced NaN/inf {key} in block {block}; check the model weights/dtype")


def _finite_fp16(values: np.ndarray, piece: int = 1 << 18) -> bool:
    if values.dtype != np.float16:
        return bool(np.isfinite(values).all())
    bits = np.ascontiguousarray(values).reshape(-1).view(np.uint16)
    return not any(((bits[i : i + piece] & 0x7C00) == 0x7C00).any() for i in range(0, bits.size, piece))


def block_progress(name: str, layout, done: set[int], todo: list[int], show: bool):
    """(on_batch callback, bar): rows done of the whole cache, and the teacher's tokens per second."""
    rank, world = rank_and_size()
    n_rows = lambda blocks: sum(layout.block_rows(b)[1] - layout.block_rows(b)[0] for b in blocks)  # noqa: E731
    bar = tqdm(
        total=n_rows(done) + n_rows(todo),
        initial=n_rows(done),
        unit="ex",
        desc=name if world == 1 else f"{name} [rank 0 of {world}]",
        disable=not show or rank != 0,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    tokens = [0, time.perf_counter()]

    def on_batch(n_rows: int, n_tokens: int) -> None:
        tokens[0] += n_tokens
        bar.update(n_rows)
        bar.set_postfix(tok_s=f"{tokens[0] / (time.perf_counter() - tokens[1]):,.0f}", refresh=False)

    return on_batch, bar
