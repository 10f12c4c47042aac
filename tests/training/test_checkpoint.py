"""What survives a restart: save -> load restores the weights, the optimizer and scheduler, the sampler, the loop
state and every random stream bit for bit, so the resumed steps are the uninterrupted ones; a torn or stale file
is never mixed in, and the metrics log is cut back to the checkpoint."""

from __future__ import annotations

import copy
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skdcache.cache import store
from skdcache.sampling.learned import LearnedSampler
from skdcache.training import checkpoint
from skdcache.training.checkpoint import TrainState, load, save, truncate_metrics


class Parts:
    """A small model with dropout, a projector, AdamW, a decaying schedule and a learned sampler."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        self.projector = nn.ModuleList([nn.Linear(3, 5)])
        params = [*self.model.parameters(), *self.projector.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0 - s / 100)
        self.sampler = LearnedSampler(3, seed=seed, lr=0.5)

    def step(self, i: int) -> None:
        x = torch.randn(2, 4)  # draws from the CPU stream, as dropout does
        loss = self.projector[0](self.model(x)).square().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.sampler.update(self.sampler.sample(i), reward=loss.item())

    def objects(self) -> dict:
        return dict(
            model=self.model,
            projector=self.projector,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            sampler=self.sampler,
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in [*self.model.state_dict().items(), *self.projector.state_dict().items()]}


def state_at(step: int) -> TrainState:
    return TrainState(
        step=step,
        histogram=Counter({"a": step - 1, "b": 1}),
        best={"step": step - 1, "accuracy": 0.625},
        history=[[0.2, 0.3, 0.5]] * step,
        elapsed=12.5,
        last_eval=(step, {"accuracy": 0.5}),
    )


def save_at(out: Path, parts: Parts, step: int, rank: int = 0, world: int = 1) -> None:
    o = parts.objects()
    save(out, state_at(step), o["model"], o["projector"], o["optimizer"], o["scheduler"], o["sampler"], rank, world)


def load_into(out: Path, parts: Parts, rank: int = 0, world: int = 1, seed: int = 0) -> TrainState:
    return load(out, **parts.objects(), device="cpu", rank=rank, world=world, seed=seed)


def assert_same_tensors(a, b, where: str = "") -> None:
    """Equal nested state (dicts, lists, tensors, numbers), tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_train_state_json_round_trip():
    state = state_at(5)
    d = json.loads(json.dumps(state.to_json()))
    assert "last_eval" not in d  # this process's latest evaluation is not a resumable state
    back = TrainState.from_json(d)
    assert isinstance(back.histogram, Counter) and back.histogram == Counter({"a": 4, "b": 1})
    assert (back.step, back.best, back.history, back.elapsed, back.last_eval) == (
        5,
        state.best,
        state.history,
        12.5,
        None,
    )


def test_resuming_from_a_checkpoint_continues_bit_for_bit(tmp_path: Path):
    """Run A: 3 steps, checkpoint, 3 more. Run B: other weights and streams, loads the checkpoint, 3 steps.
    B's restored state is A's at the checkpoint, and B's next steps are A's."""
    a = Parts(seed=0)
    for i in range(3):
        a.step(i)
    save_at(tmp_path, a, step=3)
    at_save = {
        "weights": a.weights(),
        "optimizer": copy.deepcopy(a.optimizer.state_dict()),
        "scheduler": copy.deepcopy(a.scheduler.state_dict()),
        "sampler": a.sampler.state_dict(),
        "rng": torch.get_rng_state().clone(),
    }
    for i in range(3, 6):
        a.step(i)
    after = {"weights": a.weights(), "sampler": a.sampler.state_dict(), "draw": torch.rand(8)}

    b = Parts(seed=1)
    b.step(0)  # another run's optimizer state and sampler, and a moved stream
    torch.manual_seed(1234)
    state = load_into(tmp_path, b)
    assert state.step == 3 and state.histogram == Counter({"a": 2, "b": 1}) and state.best["step"] == 2
    assert state.history == [[0.2, 0.3, 0.5]] * 3 and state.elapsed == 12.5
    assert torch.equal(torch.get_rng_state(), at_save["rng"])
    assert_same_tensors(b.weights(), at_save["weights"], "weights")
    assert_same_tensors(b.optimizer.state_dict(), at_save["optimizer"], "optimizer")
    assert_same_tensors(b.scheduler.state_dict(), at_save["scheduler"], "scheduler")
    assert b.sampler.state_dict() == at_save["sampler"]
    assert at_save["optimizer"]["state"] and at_save["sampler"]["steps"] == 3  # there was state to restore
    for i in range(3, 6):
        b.step(i)
    assert_same_tensors(b.weights(), after["weights"], "weights after resuming")
    assert b.sampler.state_dict() == after["sampler"]
    assert torch.equal(torch.rand(8), after["draw"])  # dropout masks continue where they would have


def test_the_loop_state_is_stored_with_the_weights_and_repeated_in_trainer_json(tmp_path: Path):
    save_at(tmp_path, Parts(seed=0), step=4, world=1)
    payload = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    meta = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert payload["trainer"] == meta
    assert meta["step"] == 4 and meta["world_size"] == 1 and meta["sampler"]["kind"] == "learned"
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["state.pt", "trainer.json"]


def test_without_a_checkpoint_a_run_starts_at_step_zero(tmp_path: Path):
    """A run killed before its first checkpoint: steps it logged are dropped, the objects are left as they are."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    parts = Parts(seed=0)
    before = parts.weights()
    state = load_into(tmp_path, parts)
    assert state == TrainState()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert_same_tensors(parts.weights(), before)


def test_a_torn_write_of_the_next_checkpoint_is_ignored(tmp_path: Path):
    """A kill inside save() leaves at most a temp file beside the checkpoint: the previous one is loaded."""
    save_at(tmp_path, Parts(seed=0), step=3)
    (tmp_path / "checkpoint" / f".state.pt.partial-{12345}").write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / "checkpoint" / f".trainer.json.partial-{12345}").write_text('{"step": 6, "hist')
    assert load_into(tmp_path, Parts(seed=1)).step == 3


def test_a_torn_first_checkpoint_means_a_fresh_start(tmp_path: Path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / ".state.pt.partial-777").write_bytes(b"PK\x03\x04 half a zip")
    assert load_into(tmp_path, Parts(seed=1)) == TrainState()


def test_a_stale_trainer_json_never_overrides_the_weights_step(tmp_path: Path):
    """Killed between state.pt and trainer.json: trainer.json is a step behind, state.pt's own copy wins."""
    parts = Parts(seed=0)
    save_at(tmp_path, parts, step=3)
    stale = (tmp_path / "checkpoint" / "trainer.json").read_text()
    parts.step(3)
    save_at(tmp_path, parts, step=4)
    (tmp_path / "checkpoint" / "trainer.json").write_text(stale)
    assert load_into(tmp_path, Parts(seed=1)).step == 4


def test_an_older_checkpoint_takes_the_loop_state_from_trainer_json(tmp_path: Path):
    save_at(tmp_path, Parts(seed=0), step=3)
    path = tmp_path / "checkpoint" / "state.pt"
    payload = torch.load(path, weights_only=True)
    del payload["trainer"]  # written before the loop state moved into state.pt
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    assert load_into(tmp_path, Parts(seed=1)).step == 3


def test_a_failed_save_keeps_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch):
    parts = Parts(seed=0)
    save_at(tmp_path, parts, step=3)
    weights = parts.weights()
    parts.step(3)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    with pytest.raises(OSError):
        save_at(tmp_path, parts, step=4)
    monkeypatch.undo()
    restored = Parts(seed=1)
    assert load_into(tmp_path, restored).step == 3
    assert_same_tensors(restored.weights(), weights)


def test_a_save_cut_inside_the_state_write_leaves_no_temp_file(tmp_path: Path, monkeypatch):
    parts = Parts(seed=0)
    save_at(tmp_path, parts, step=3)
    monkeypatch.setattr(store.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        save_at(tmp_path, parts, step=4)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["state.pt", "trainer.json"]
    assert load_into(tmp_path, Parts(seed=1)).step == 3


def test_loading_cuts_the_metrics_log_back_to_the_checkpoint(tmp_path: Path):
    save_at(tmp_path, Parts(seed=0), step=3)
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    lines.insert(3, json.dumps({"step": 3, "eval": {"accuracy": 0.5}}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # torn by the kill
    load_into(tmp_path, Parts(seed=1))
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], "eval" in x) for x in kept] == [(1, False), (2, False), (3, False), (3, True)]


def test_truncate_metrics_drops_lines_it_cannot_place(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    truncate_metrics(path, 3)  # no log yet: nothing to do
    assert not path.exists()
    lines = ['{"step": 1}', "not json", '{"loss": 1.0}', '{"step": 2.0}', '{"step": "2"}', "[1, 2]", '{"step": 3}']
    path.write_text("\n".join(lines) + "\n" + '{"step": 4}\n')
    truncate_metrics(path, 3)
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # replaced atomically, no leftovers


# ---- DDP: every rank's own dropout stream ------------------------------------------------------------------------
def test_other_ranks_keep_their_own_stream_of_the_latest_step_only(tmp_path: Path):
    parts = Parts(seed=0)
    ckpt = tmp_path / "checkpoint"
    save_at(tmp_path, parts, step=3, rank=0, world=3)
    torch.manual_seed(21)
    save_at(tmp_path, parts, step=3, rank=1, world=3)
    rank1_at_3 = torch.get_rng_state().clone()
    save_at(tmp_path, parts, step=3, rank=2, world=3)
    torch.manual_seed(22)
    save_at(tmp_path, parts, step=6, rank=1, world=3)  # rank 1 at step 6: its step-3 stream goes
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "rng-rank1-step6.pt",
        "rng-rank2-step3.pt",
        "state.pt",
        "trainer.json",
    ]
    assert not torch.equal(torch.load(ckpt / "rng-rank1-step6.pt", weights_only=True)["torch_rng"], rank1_at_3)


def test_each_rank_resumes_its_own_stream(tmp_path: Path):
    parts = Parts(seed=0)
    save_at(tmp_path, parts, step=3, rank=0, world=2)
    rank0 = torch.get_rng_state().clone()
    torch.manual_seed(77)
    save_at(tmp_path, parts, step=3, rank=1, world=2)
    rank1 = torch.get_rng_state().clone()
    torch.manual_seed(0)
    load_into(tmp_path, Parts(seed=1), rank=1, world=2)
    assert torch.equal(torch.get_rng_state(), rank1)
    load_into(tmp_path, Parts(seed=1), rank=0, world=2)
    assert torch.equal(torch.get_rng_state(), rank0)


def test_a_rank_without_its_stream_restarts_from_a_seed(tmp_path: Path, caplog):
    save_at(tmp_path, Parts(seed=0), step=3, rank=0, world=2)  # rank 1's file never made it
    with caplog.at_level(logging.WARNING, logger="skdcache"):
        load_into(tmp_path, Parts(seed=1), rank=1, world=2, seed=5)
    got = torch.rand(4)
    torch.manual_seed(int(np.random.SeedSequence([5, 1, 2]).generate_state(1)[0]))
    assert torch.equal(got, torch.rand(4))
    assert "no RNG state of rank 1 at step 3" in caplog.text


def test_another_world_size_is_warned_about(tmp_path: Path, caplog):
    save_at(tmp_path, Parts(seed=0), step=3, rank=0, world=2)
    with caplog.at_level(logging.WARNING, logger="skdcache"):
        assert load_into(tmp_path, Parts(seed=1), rank=0, world=1).step == 3
    assert "written by 2 ranks, resuming on 1" in caplog.text


def test_a_changed_sampling_is_refused_on_resume(tmp_path: Path):
    from skdcache.sampling.student_aware import FitSampler

    save_at(tmp_path, Parts(seed=0), step=3)
    parts = Parts(seed=1)
    parts.sampler = FitSampler(3, seed=0)
    with pytest.raises(ValueError):
        load_into(tmp_path, parts)
