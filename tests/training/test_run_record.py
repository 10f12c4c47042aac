"""run.json, the record `skdcache report` and the benchmarks read: its fields, which weights each metric is taken
at (the test split at the checkpoint validation selected), and reloading a saved student (tied weights saved once)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from skdcache.cache.manifest import MetricInfo
from skdcache.data.rows import DataSpec
from skdcache.errors import SkdError
from skdcache.sampling.categorical import from_weights
from skdcache.training import run_record
from skdcache.training.checkpoint import TrainState
from skdcache.training.config import TrainConfig
from skdcache.training.run_record import Run, load_student, record_run, save_student

METRIC = MetricInfo(split="validation", name="accuracy", value=0.75, n_rows=40)


class Tied(nn.Module):
    """A head whose output projection is the input embedding (as in causal LMs): one tensor, two names."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight


def cache(name: str, metric: MetricInfo | None = METRIC):
    manifest = SimpleNamespace(cache_key=name * 32, teacher=SimpleNamespace(num_parameters=1000), metric=metric)
    return SimpleNamespace(name=name, path=Path(f"/caches/{name}"), manifest=manifest)


def make_run(out: Path, model: nn.Module | None = None, **kw) -> Run:
    caches = kw.pop("caches", [cache("a"), cache("b", metric=None)])
    parts = dict(
        cfg=TrainConfig(data=DataSpec("data"), student="student", output=str(out), mode="skd"),
        plan=SimpleNamespace(rows=SimpleNamespace(fingerprint="fp" * 16), caches=caches),
        device=torch.device("cpu"),
        rank=0,
        world=1,
        sampler=from_weights([1.0, 3.0], 2, seed=0),
        draws=SimpleNamespace(summary={"kind": "route"}),
        model=model or nn.Linear(3, 2),
        tokenizer=None,
        objective="objective",
        projector=None,
        source=None,
        inputs=None,
        eval_inputs="validation rows",
        test_inputs=None,
    )
    return Run(**{**parts, **kw})


@pytest.fixture
def evaluations(monkeypatch) -> list[tuple[str, float]]:
    """evaluate() replaced: it reports which rows it scored and a fingerprint of the weights it scored them with."""
    calls: list[tuple[str, float]] = []

    def evaluate(model, inputs, objective, device):
        assert objective == "objective" and device == torch.device("cpu")
        weights = weights_of(model)
        calls.append((inputs, weights))
        return {"primary": "accuracy", "rows": inputs, "weights": weights}

    monkeypatch.setattr(run_record, "evaluate", evaluate)
    return calls


def weights_of(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def finished(step: int = 8, best_step: int = 8, last_eval_step: int | None = 8) -> TrainState:
    last = (last_eval_step, {"primary": "accuracy", "accuracy": 0.5}) if last_eval_step else None
    return TrainState(
        step=step,
        histogram=Counter({"a": 3, "b": 5}),
        best={"step": best_step, "accuracy": 0.6},
        history=[],
        elapsed=0.0,
        last_eval=last,
    )


def test_the_record_holds_the_run_and_is_written_as_returned(tmp_path: Path, evaluations):
    run = make_run(tmp_path)
    record = record_run(run, finished(), seconds=30.0, loop_seconds=4.0)
    assert evaluations == []  # the loop evaluated its last step already: nothing is evaluated twice
    assert json.loads((tmp_path / "run.json").read_text()) == json.loads(json.dumps(record, default=str))
    assert record["config"] == run.cfg.to_dict() and record["config"]["data"]["source"] == "data"
    assert record["dataset_fingerprint"] == "fp" * 16
    assert record["teachers"] == [
        {"name": "a", "cache_key": "a" * 32, "path": "/caches/a", "num_parameters": 1000, "metric": METRIC.to_dict()},
        {"name": "b", "cache_key": "b" * 32, "path": "/caches/b", "num_parameters": 1000, "metric": None},
    ]
    assert record["student_parameters"] == 3 * 2 + 2
    assert record["steps"] == 8 and record["final"] == {"primary": "accuracy", "accuracy": 0.5}
    assert record["test"] == record["test_final"] == {}
    assert record["best"] == {"step": 8, "accuracy": 0.6}
    assert record["teacher_histogram"] == {"a": 3, "b": 5}
    assert record["sampler"] == {"kind": "weights", "probs": [0.25, 0.75], "seed": 0, "meta": {"weights": [1.0, 3.0]}}
    assert record["learned_history"] is None
    assert record["seconds"] == 30.0 and record["steps_per_second"] == pytest.approx(2.0)
    assert record["device"] == "cpu" and record["world_size"] == 1 and "rank" not in record
    assert record["peak_rss_mib"] > 0


def test_modes_without_a_sampler_record_their_draws(tmp_path: Path, evaluations):
    state = finished()
    state.history = [[0.5, 0.5], [0.4, 0.6]]
    record = record_run(make_run(tmp_path, sampler=None), state, 1.0, 0.0)
    assert record["sampler"] == {"kind": "route"} and record["learned_history"] == [[0.5, 0.5], [0.4, 0.6]]
    assert record["steps_per_second"] == pytest.approx(8 / 1e-9)  # no loop time (a reused run): no division error


def test_a_resumed_finished_run_evaluates_its_last_step(tmp_path: Path, evaluations):
    model = nn.Linear(3, 2)
    record = record_run(make_run(tmp_path, model), finished(last_eval_step=None), 1.0, 1.0)
    assert evaluations == [("validation rows", weights_of(model))]
    assert record["final"]["rows"] == "validation rows"
    record = record_run(make_run(tmp_path, eval_inputs=None), finished(last_eval_step=6), 1.0, 1.0)
    assert record["final"] == {}  # no labelled split: nothing to report


def test_the_test_split_is_scored_at_the_selected_checkpoint_and_at_the_last_step(tmp_path: Path, evaluations):
    """Validation selected step 4 (its weights are in OUTPUT/student); the run ended at step 8."""
    torch.manual_seed(0)
    selected = nn.Linear(3, 2)
    (tmp_path / "student").mkdir()
    save_file(selected.state_dict(), tmp_path / "student" / "model.safetensors")
    final = nn.Linear(3, 2)
    final_weights, selected_weights = weights_of(final), weights_of(selected)
    assert final_weights != pytest.approx(selected_weights)
    record = record_run(make_run(tmp_path, final, test_inputs="test rows"), finished(best_step=4), 1.0, 1.0)
    assert record["test_final"] == {"primary": "accuracy", "rows": "test rows", "weights": final_weights}
    assert record["test"] == {"primary": "accuracy", "rows": "test rows", "weights": selected_weights}
    assert [rows for rows, _ in evaluations] == ["test rows", "test rows"]
    assert torch.equal(final.weight, selected.weight)  # the model now holds what the user ships


def test_when_the_last_step_was_selected_the_test_is_scored_once(tmp_path: Path, evaluations):
    record = record_run(make_run(tmp_path, test_inputs="test rows"), finished(best_step=8), 1.0, 1.0)
    assert record["test"] == record["test_final"] and len(evaluations) == 1  # no student folder needed


def test_other_ranks_return_rank_zeros_record(tmp_path: Path, evaluations):
    record_run(make_run(tmp_path), finished(), 1.0, 1.0)
    written = (tmp_path / "run.json").read_text()
    record = record_run(make_run(tmp_path, rank=1, world=2, test_inputs="test rows"), finished(best_step=2), 9.0, 9.0)
    assert record == {**json.loads(written), "rank": 1}
    assert (tmp_path / "run.json").read_text() == written and evaluations == []  # rank 1 neither scores nor writes


# ---- the saved student -----------------------------------------------------------------------------------------------
def test_load_student_restores_saved_weights(tmp_path: Path):
    torch.manual_seed(1)
    saved = Tied()
    state = {k: v for k, v in saved.state_dict().items() if k != "head.weight"}  # a tied weight is saved once
    save_file(state, tmp_path / "model.safetensors")
    run = make_run(tmp_path, Tied())
    load_student(run, tmp_path)
    for name, value in saved.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name
    assert run.model.head.weight is run.model.embed.weight  # still tied


def test_load_student_reads_every_shard(tmp_path: Path):
    torch.manual_seed(2)
    saved = Tied()
    state = saved.state_dict()
    save_file({"embed.weight": state["embed.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in ("body.weight", "body.bias")}, tmp_path / "model-00002-of-00002.safetensors")
    run = make_run(tmp_path, Tied())
    load_student(run, tmp_path)
    assert torch.equal(run.model.body.bias, saved.body.bias) and torch.equal(run.model.embed.weight, saved.embed.weight)


@pytest.mark.parametrize("problem", ["missing", "unexpected"])
def test_weights_that_do_not_fit_the_student_are_refused(tmp_path: Path, problem: str):
    state = {k: v.clone() for k, v in Tied().state_dict().items() if k != "head.weight"}
    if problem == "missing":
        del state["body.bias"]
    else:
        state["extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(SkdError) as info:
        load_student(make_run(tmp_path, Tied()), tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}: weights do not fit the student")
    assert ("'body.bias'" if problem == "missing" else "'extra.weight'") in msg


def test_save_student_saves_model_and_tokenizer_together(tmp_path: Path):
    saved: list[tuple[str, Path]] = []
    model = SimpleNamespace(save_pretrained=lambda p: saved.append(("model", p)))
    tokenizer = SimpleNamespace(save_pretrained=lambda p: saved.append(("tokenizer", p)))
    save_student(make_run(tmp_path, model=model, tokenizer=tokenizer), tmp_path / "student")
    assert saved == [("model", tmp_path / "student"), ("tokenizer", tmp_path / "student")]
