"""`student-rank` sampling: short single-teacher pilot runs, ranked by the student's validation metric.

Each pilot is keyed by everything that determines its result (teacher cache, student, data, budget and the
hyper-parameters) and stored under the cache root, so a later run with the same settings reuses it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from skdcache.cache.fingerprint import canonical_hash
from skdcache.cache.store import write_json

log = logging.getLogger("skdcache")


def pilot_key(trainer, cache, steps: int) -> str:
    c = trainer.cfg
    return canonical_hash(
        {
            "dataset": trainer.rows.fingerprint,
            "teacher": cache.manifest.cache_key,
            "student": [c.student, c.student_layers, c.student_head],
            "steps": steps,
            "hyper": [c.batch_size, c.lr, c.weight_decay, c.warmup_ratio, c.temperature, c.alpha, c.max_length, c.seed],
            "eval": trainer.eval_rows.fingerprint if trainer.eval_rows is not None else None,
        }
    )


def pilot_metrics(trainer) -> list[float]:
    """The student's primary validation metric after a `single` pilot with each teacher (reused when cached)."""
    from skdcache.train import train

    if trainer.eval_rows is None:
        raise ValueError("student-rank sampling needs a labelled --eval-split to rank the pilots")
    cfg = trainer.cfg
    # Half the run: a tenth (the first default) left every pilot at majority-class accuracy, i.e. uniform.
    steps = cfg.pilot_steps or max(1, trainer.total_steps // 2)
    metrics = []
    for cache in trainer.caches:
        key = pilot_key(trainer, cache, steps)
        record_path = Path(cache.path).parent / "pilots" / f"{key}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            log.info("pilot %s: reused (%s=%.4f)", cache.name, record["metric_name"], record["metric"])
        else:
            out = Path(cfg.output) / "pilots" / cache.name
            run = train(
                replace(
                    cfg,
                    mode="single",
                    teachers=[cache.name],
                    max_steps=steps,
                    sampling="uniform",
                    output=str(out),
                    eval_every=steps,
                    resume=False,
                    beta=0.0,
                )
            )
            final = run["final"]
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
