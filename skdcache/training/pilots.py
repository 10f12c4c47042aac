"""`student-rank` sampling: short single-teacher pilot runs, ranked by the student's validation metric.

Pilots run before the real run builds anything, through the training function they are handed (no import of
the recipe, no recursion inside a half-built trainer). Each pilot is keyed by the whole run config minus
an explicit list of settings that cannot change its result, plus the student's weights, the teacher cache
and the budget; it is stored under the cache root, so a later run with the same settings reuses it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from skdcache.cache.fingerprint import canonical_hash, hash_files, model_weights_hash
from skdcache.cache.reader import TeacherCache
from skdcache.cache.store import write_json
from skdcache.data.rows import TextRows
from skdcache.training.config import TrainConfig

log = logging.getLogger("skdcache")

# Settings a pilot does not depend on: where things are written or read from, how progress is shown, the
# real run's own team / sampling / budget (each pilot fixes those itself), and what only the real run uses.
PILOT_IGNORES = frozenset(
    {
        "output",
        "cache",
        "teachers",
        "mode",
        "sampling",
        "sampling_temperature",
        "epochs",
        "max_steps",
        "eval_every",
        "test_split",
        "pilot_steps",
        "learned_lr",
        "resume",
        "overwrite",
        "progress",
        "num_workers",
        "beta",
        "layer_map",
        "teacher_path",
        "data",  # replaced by the rows' fingerprint, which is what the pilot trains on
    }
)


def pilot_key(cfg: TrainConfig, rows: TextRows, eval_rows: TextRows | None, cache: TeacherCache, steps: int) -> str:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in PILOT_IGNORES}
    return canonical_hash(
        {
            "settings": settings,
            "student_weights": _student_weights(cfg.student),
            "dataset": rows.fingerprint,
            "eval": eval_rows.fingerprint if eval_rows is not None else None,
            "teacher": cache.manifest.cache_key,
            "steps": steps,
        }
    )


def _student_weights(source: str) -> str | None:
    """Hash of the student's files when it is a local directory or config, so retraining it at the same path
    does not reuse stale pilots (a hub id is keyed by its name, as its revision pins its weights)."""
    path = Path(source).expanduser()
    if path.is_file():
        return hash_files([path])
    if path.is_dir():
        return model_weights_hash(path)
    return None


def pilot_metrics(
    cfg: TrainConfig,
    rows: TextRows,
    eval_rows: TextRows | None,
    caches: list[TeacherCache],
    steps: int,
    run: Callable[[TrainConfig], dict],
) -> list[float]:
    """The student's primary validation metric after a `single` pilot of `steps` with each teacher.

    Args:
        run: trains one config and returns its run record (`skdcache.train.train`).
    """
    if eval_rows is None:
        raise ValueError("student-rank sampling needs a labelled --eval-split to rank the pilots")
    metrics = []
    for cache in caches:
        key = pilot_key(cfg, rows, eval_rows, cache, steps)
        record_path = Path(cache.path).parent / "pilots" / f"{key}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            log.info("pilot %s: reused (%s=%.4f)", cache.name, record["metric_name"], record["metric"])
        else:
            out = Path(cfg.output) / "pilots" / cache.name
            pilot = replace(
                cfg,
                mode="single",
                teachers=[cache.name],
                max_steps=steps,
                sampling="uniform",
                output=str(out),
                eval_every=steps,
                resume=False,
                overwrite=True,
                beta=0.0,
            )
            final = run(pilot)["final"]
            record = {
                "teacher": cache.name,
                "steps": steps,
                "metric_name": final["primary"],
                "metric": final[final["primary"]],
                "run": str(out),
            }
            write_json(record_path, record)
            log.info("pilot %s: %s=%.4f", cache.name, record["metric_name"], record["metric"])
        metrics.append(record["metric"])
    if len(metrics) > 1 and max(metrics) - min(metrics) < 1e-3:
        log.warning(
            "student-rank: every pilot reached %s=%.4f, so the teachers cannot be told apart and sampling is "
            "uniform; raise --pilot-steps (now %d)",
            record["metric_name"],
            metrics[0],
            steps,
        )
    return metrics
