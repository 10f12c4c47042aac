"""What survives a restart: the loop's state, the weights and optimizer, and every random stream.

A checkpoint is one file, `OUTPUT/checkpoint/state.pt`: tensors and the loop state together, written to a temp
file, fsynced and renamed, so a kill at any moment leaves either the previous checkpoint or the new one, never a
mix of two steps. `trainer.json` repeats the loop state for people and tools (written atomically after it).
Under DDP, ranks other than 0 keep their own dropout stream in `rng-rank<r>-step<s>.pt`.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from skdcache.cache.store import atomic_write
from skdcache.distributed import barrier

log = logging.getLogger("skdcache")


@dataclass
class TrainState:
    """The loop's own state: where it is, what it drew, the best evaluation so far."""

    step: int = 0
    histogram: Counter = field(default_factory=Counter)  # optimizer steps per teacher name
    best: dict | None = None  # the best evaluation, with its step
    history: list = field(default_factory=list)  # adaptive sampling: the distribution after each of its moves
    elapsed: float = 0.0  # training seconds before this process (resume)
    last_eval: tuple[int, dict] | None = None  # (step, metrics) of the latest evaluation of this process

    def to_json(self) -> dict:
        d = asdict(self)
        d["histogram"] = dict(self.histogram)
        d.pop("last_eval")
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        return cls(d["step"], Counter(d["histogram"]), d["best"], d["history"], d["elapsed"])


def rng_state() -> dict:
    """This process's dropout streams (CPU, and the current CUDA device's, which GPU dropout draws from)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def save(out: Path, state: TrainState, model, projector, optimizer, scheduler, sampler, rank: int, world: int) -> None:
    """Rank 0 writes the weights and the loop state; every other rank its own random stream."""
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    mine = f"rng-rank{rank}-step{state.step}.pt"
    if rank == 0:
        payload = {
            "model": model.state_dict(),
            "projector": projector.state_dict() if projector is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        meta = {**state.to_json(), "sampler": sampler.state_dict() if sampler else None, "world_size": world}
        payload["trainer"] = meta  # in the same file as the weights: they can never be of different steps
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write(ckpt / "state.pt", buffer.getvalue())
        atomic_write(ckpt / "trainer.json", json.dumps(meta).encode())
    else:  # each rank keeps its own dropout stream, saved per step so a crash cannot mix steps
        torch.save(rng_state(), ckpt / mine)
    barrier()  # the other ranks wait for rank 0's files
    if rank > 0:  # only now is rank 0's trainer.json at this step, so older streams can go
        for old in ckpt.glob(f"rng-rank{rank}-step*.pt"):
            if old.name != mine:
                old.unlink()


def load(
    out: Path, *, model, projector, optimizer, scheduler, sampler, device, rank: int, world: int, seed: int
) -> TrainState:
    """Restore everything `save` wrote (a fresh state when there is no checkpoint yet); keyword-only, as the
    objects are many and several may be None."""
    ckpt = out / "checkpoint"
    if not (ckpt / "state.pt").exists():
        log.info("no checkpoint in %s: starting from step 0", ckpt)
        if rank == 0:
            truncate_metrics(out / "metrics.jsonl", 0)  # steps logged by a run killed before its first checkpoint
        return TrainState()
    payload = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
    model.load_state_dict(payload["model"])
    if projector is not None:
        projector.load_state_dict(payload["projector"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"]:
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    meta = payload.get("trainer") or json.loads((ckpt / "trainer.json").read_text())  # older checkpoints: the json
    if world > 1 or meta.get("world_size", 1) > 1:
        _load_rank_rng(ckpt, meta["step"], meta.get("world_size", 1), rank, world, seed)
    if sampler is not None and meta["sampler"]:
        sampler.load_state_dict(meta["sampler"])  # ValueError when the run's sampling changed
    if rank == 0:
        truncate_metrics(out / "metrics.jsonl", meta["step"])
    barrier()
    log.info("resuming %s at step %d", out, meta["step"])
    return TrainState.from_json(meta)


def _load_rank_rng(ckpt: Path, step: int, saved_world: int, rank: int, world: int, seed: int) -> None:
    """Rank r continues its own dropout stream; with another world size the streams cannot match."""
    path = ckpt / f"rng-rank{rank}-step{step}.pt"
    if saved_world != world:
        log.warning(
            "checkpoint was written by %d ranks, resuming on %d: dropout masks will differ from an uninterrupted run",
            saved_world,
            world,
        )
    if rank > 0 and path.exists():
        saved = torch.load(path, weights_only=True)
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda_rng"])
    elif rank > 0:
        log.warning("no RNG state of rank %d at step %d: its dropout stream restarts from a seed", rank, step)
        torch.manual_seed(int(np.random.SeedSequence([seed, rank, saved_world]).generate_state(1)[0]))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint (and a line torn by a kill), so a resumed log reads like an
    uninterrupted one; replaced atomically, so a kill during the truncation loses nothing."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(errors="replace").splitlines() if _step_of(line) <= step]
    atomic_write(path, "".join(line + "\n" for line in keep).encode())


def _step_of(line: str) -> float:
    """The step of a metrics line; infinity for a torn or foreign line, so it is dropped."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
    return step if isinstance(step, int) else float("inf")
