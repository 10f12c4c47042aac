"""A prepared run (`Run`, what `train.prepare` builds) and the run.json it leaves (`record_run`).

Kept apart from the loop in `train` so the record's schema, which `skdcache report` and the benchmarks read,
is in one place.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from skdcache.distill.objective import Objective
from skdcache.distributed import barrier
from skdcache.errors import SkdError
from skdcache.sampling.base import Sampler
from skdcache.sampling.categorical import describe
from skdcache.targets.sources import TargetSource, TeacherDraws
from skdcache.training.checkpoint import TrainState
from skdcache.training.config import TrainConfig
from skdcache.training.evaluate import evaluate
from skdcache.training.loader import StudentInputs
from skdcache.training.plan import RunPlan
from skdcache.training.student import count_parameters


@dataclass(kw_only=True)
class Run:
    """Everything a run is made of, built by `prepare` in this order."""

    cfg: TrainConfig
    plan: RunPlan
    device: torch.device
    rank: int
    world: int
    sampler: Sampler | None
    draws: TeacherDraws
    model: torch.nn.Module
    tokenizer: object
    objective: Objective
    projector: torch.nn.ModuleList | None
    source: TargetSource
    inputs: StudentInputs
    eval_inputs: StudentInputs | None
    test_inputs: StudentInputs | None = None  # --test-split: reported at the selected checkpoint, never selects

    @property
    def caches(self):
        return self.plan.caches

    @property
    def out(self) -> Path:
        return Path(self.cfg.output)


def save_student(run: Run, path: Path) -> None:
    run.model.save_pretrained(path)
    run.tokenizer.save_pretrained(path)


def load_student(run: Run, path: Path) -> None:
    """Weights written by `save_student` back into the run's model (a tied weight is saved once, under one name)."""
    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f, device=str(run.device)))
    missing, unexpected = run.model.load_state_dict(state, strict=False)
    params = run.model.state_dict(keep_vars=True)
    loaded = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if params[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise SkdError(f"{path}: weights do not fit the student (missing {untied[:3]}, unexpected {unexpected[:3]})")


def record_run(run: Run, state: TrainState, seconds: float, loop_seconds: float) -> dict:
    """run.json: the config, the team, the final and test metrics, the draws and the cost."""
    if run.rank != 0:  # rank 0 evaluates and writes run.json (to --output, shared by all ranks)
        barrier()
        return {**json.loads((run.out / "run.json").read_text()), "rank": run.rank}
    last_step, final = state.last_eval or (None, {})
    if last_step != state.step:  # the loop evaluates at its last step; only a finished resume gets here
        final = evaluate(run.model, run.eval_inputs, run.objective, run.device) if run.eval_inputs else {}
    # the test metric of the last step, and of the checkpoint validation selected (what a user ships)
    test_final = evaluate(run.model, run.test_inputs, run.objective, run.device) if run.test_inputs else {}
    test = test_final
    if run.test_inputs and state.best and state.best["step"] != state.step:
        load_student(run, run.out / "student")
        test = evaluate(run.model, run.test_inputs, run.objective, run.device)
    record = {
        "config": run.cfg.to_dict(),
        "dataset_fingerprint": run.plan.rows.fingerprint,
        "teachers": [
            {
                "name": c.name,
                "cache_key": c.manifest.cache_key,
                "path": str(c.path),
                "num_parameters": c.manifest.teacher.num_parameters,
                "metric": c.manifest.metric.to_dict() if c.manifest.metric else None,
            }
            for c in run.caches
        ],
        "student_parameters": count_parameters(run.model),
        "steps": state.step,
        "final": final,
        "test": test,
        "test_final": test_final,
        "best": state.best,
        "teacher_histogram": dict(state.histogram),
        "sampler": describe(run.sampler) if run.sampler else run.draws.summary,
        "learned_history": state.history or None,
        "seconds": seconds,
        "steps_per_second": state.step / max(loop_seconds, 1e-9),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": str(run.device),
        "world_size": run.world,
    }
    (run.out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    barrier()
    return record
