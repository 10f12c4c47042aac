"""Resumable benchmark campaigns: reuse a finished run only if it was trained with the settings asked for now.

A campaign rerun with another budget (more steps, another alpha, other teacher epochs) would otherwise pick up
runs of the old budget from the same folders and report them under the new one.
"""

from __future__ import annotations

import json
from pathlib import Path

from skdcache.training.config import TrainConfig

# Where things lie, not how the run was trained: a moved clone or another venv keeps its runs.
WHERE = {"output", "cache", "student", "teacher_path", "progress", "num_workers"}


def settings(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k not in WHERE}
    out["data"] = {k: v for k, v in config["data"].items() if k != "source"}
    return out


def finished_run(cfg: TrainConfig) -> dict | None:
    """The run.json of `cfg.output` if it holds this run; None if not run yet; exits if it holds another one."""
    record = Path(cfg.output) / "run.json"
    if not record.exists():
        return None
    run = json.loads(record.read_text())
    # through JSON, so tuples and lists compare equal
    old, new = settings(run["config"]), settings(json.loads(json.dumps(cfg.to_dict())))
    if old != new:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SystemExit(
            f"{cfg.output} holds a run with other settings ({', '.join(changed)}); "
            "delete that folder or pass another --work"
        )
    return run
