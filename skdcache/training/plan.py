"""Plan a training run before any model exists: its rows, teacher caches, head, task and step budget.

Everything here is checked against everything else (data vs caches, caches vs each other), so a bad
combination fails in seconds with one line, not after the student is built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from skdcache.cache.catalog import existing_root, find_teacher_caches, list_caches
from skdcache.cache.reader import TeacherCache
from skdcache.cache.roots import open_root
from skdcache.data.chat import check_template, render_chat
from skdcache.data.rows import TextRows, load_rows
from skdcache.data.tables import available_splits
from skdcache.distributed import from_rank0_object
from skdcache.errors import SkdError
from skdcache.sampling.base import Sampler
from skdcache.sampling.factory import ADAPTIVE, LOOP_BOUND, build_sampler
from skdcache.training.config import MODES, TrainConfig
from skdcache.training.loader import StepSchedule
from skdcache.training.pilots import pilot_metrics
from skdcache.training.student import student_tokenizer

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """What a run trains on and against; no weights."""

    rows: TextRows
    eval_rows: TextRows | None  # the labelled split checkpoints are selected on
    test_rows: TextRows | None  # --test-split, reported at the selected checkpoint (rank 0 only)
    caches: list[TeacherCache]  # the team, in the order the sampler indexes it
    head: str  # sequence | mlm | causal
    task: str  # classification | regression | lm
    num_labels: int | None
    schedule: StepSchedule
    heldout: np.ndarray | None  # learned / student-fit sampling's held-out rows (never trained on)
    total_steps: int
    eval_every: int

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.caches]


def plan_run(cfg: TrainConfig, rank: int = 0, world: int = 1) -> RunPlan:
    """Load the rows, open and check the teacher caches, and fix the step budget."""
    if cfg.mode not in MODES:
        raise SkdError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.batch_size % world:
        raise SkdError(f"--batch-size {cfg.batch_size} is the global batch: use a multiple of {world} ranks")
    root = open_root(cfg.cache)
    if cfg.mode != "none" and root.is_remote:  # bad URL or credentials: one line, before the data is loaded
        root.remote().check_readable()
    elif cfg.mode != "none":
        existing_root(root.path)
    rows = load_rows(cfg.data)
    eval_rows = None
    if cfg.eval_split and cfg.eval_split in available_splits(cfg.data):
        eval_rows = load_rows(replace(cfg.data, split=cfg.eval_split, limit=cfg.eval_rows))
    test_rows = None  # rank 0 reports the test metric
    if cfg.test_split and rank == 0:
        test_rows = load_rows(replace(cfg.data, split=cfg.test_split, limit=None))
    if rows.messages is not None:  # chat rows: rendered with the student's template (or --chat-template)
        tokenizer = student_tokenizer(cfg.student, cfg.trust_remote_code)
        rows, eval_rows, test_rows = (
            render_chat(r, tokenizer, cfg.data.chat_template) if r is not None else None
            for r in (rows, eval_rows, test_rows)
        )
    caches = (
        open_team(rows, cfg.cache, cfg.teachers, single=cfg.mode == "single", rank=rank) if cfg.mode != "none" else []
    )
    head = _student_head(cfg, rows, caches)
    if cfg.full_logits and (cfg.mode != "online" or head == "sequence"):
        raise SkdError("--full-logits is for --mode online with MLM/causal teachers (the cache stores top-k)")

    heldout, train_rows = None, None
    if cfg.mode in ("skd", "online") and cfg.sampling in ADAPTIVE:
        heldout, train_rows = _split_heldout(len(rows), cfg.seed)
    schedule = StepSchedule(len(rows), cfg.batch_size, cfg.seed, train_rows)
    if schedule.batch_size % world:
        raise SkdError(f"{len(rows)} rows give batches of {schedule.batch_size}: too few for {world} ranks")
    per_epoch = max(1, schedule.steps_per_epoch // cfg.grad_accum)
    return RunPlan(
        rows=rows,
        eval_rows=eval_rows,
        test_rows=test_rows,
        caches=caches,
        head=head,
        task="lm" if head != "sequence" else rows.task,
        num_labels=_num_labels(rows, head, caches),
        schedule=schedule,
        heldout=heldout,
        total_steps=cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch)),
        eval_every=cfg.eval_every or per_epoch,
    )


def open_team(
    rows: TextRows, cache: str | None, teachers: list[str] | None, *, single: bool = False, rank: int = 0
) -> list[TeacherCache]:
    """The teacher caches of these rows in the `cache` root (mirrored first from a remote root), checked to form
    one team; `teachers` picks them by name (None: every one), `single` asks for exactly one."""
    root = open_root(cache)
    if root.is_remote:  # rank 0 chooses the groups, so every rank trains from the same ones
        remote = root.remote()
        keys = remote.choose(rows.fingerprint, teachers) if rank == 0 else None
        keys = from_rank0_object(keys)
        paths = {name: remote.fetch(rows.fingerprint, key) for name, key in keys.items()}
    else:
        paths = find_teacher_caches(root.path, rows.fingerprint, teachers)
    if single and len(paths) != 1:
        raise SkdError(f"--mode single needs exactly one teacher, got {list(paths)}; pass --teachers NAME")
    if not paths and rows.messages is not None and not root.is_remote:
        cached = [e.manifest.dataset for e in list_caches(root.path) if e.manifest]
        check_template(cached, rows, "pass --chat-template FILE holding the cache's template")
    if not paths:
        raise SkdError(f"no teacher cached for this data in {root}; run `skdcache precompute` first")
    caches = [TeacherCache(p) for p in paths.values()]
    for c in caches:
        c.check_dataset(rows.fingerprint, len(rows))
    heads = {c.targets.head for c in caches}
    if len(heads) > 1:
        raise SkdError(f"teachers mix heads {sorted(heads)}; distil from teachers of one kind at a time")
    for c in caches:
        if c.targets.head == "sequence" and c.manifest.dataset.label_names != rows.label_names:
            raise SkdError(f"teacher {c.name} was cached with labels {c.manifest.dataset.label_names}")
    return caches


def _student_head(cfg: TrainConfig, rows: TextRows, caches: list[TeacherCache]) -> str:
    if cfg.student_head != "auto":
        return cfg.student_head
    if caches:
        return caches[0].targets.head
    if rows.task == "unlabelled":
        raise SkdError("unlabelled data and no teacher: pass --student-head mlm|causal")
    return "sequence"


def _num_labels(rows: TextRows, head: str, caches: list[TeacherCache]) -> int | None:
    """The data's label count, or the teachers' when the data is unlabelled (pure distillation)."""
    if rows.num_labels is not None or head != "sequence":
        return rows.num_labels
    if not caches:
        raise SkdError("unlabelled data: a sequence student needs --label-column or cached teachers")
    return caches[0].manifest.teacher.num_labels


def _split_heldout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`learned` sampling's reward pool: a fixed slice of train rows the student never trains on."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    k = int(min(128, max(8, 0.02 * n)))
    return np.sort(order[:k]), np.sort(order[k:])


def sampler_for_run(cfg: TrainConfig, plan: RunPlan, run_pilot: Callable[[TrainConfig], dict]) -> Sampler | None:
    """The teacher distribution of an skd / online run, from `--sampling` (None for the other modes).

    Args:
        run_pilot: trains one config (`skdcache.train.train`); student-rank runs one pilot per teacher with it.
    """
    if cfg.mode not in ("skd", "online"):
        return None
    metrics = None
    if cfg.sampling == "student-rank":
        # half the run: a tenth (the first default) left every pilot at majority-class accuracy, i.e. uniform
        steps = cfg.pilot_steps or max(1, plan.total_steps // 2)
        metrics = pilot_metrics(cfg, plan.rows, plan.eval_rows, plan.caches, steps, run_pilot)
    sizes = [c.manifest.teacher.num_parameters or 0 for c in plan.caches]
    if cfg.sampling == "small-to-large":
        _warn_unordered(plan.caches, sizes)
    refresh = (max(1, int(cfg.warmup_ratio * plan.total_steps)), plan.eval_every)  # student-fit: warm-up, evals
    return _build(
        cfg.sampling,
        plan.caches,
        cfg.seed,
        cfg.sampling_temperature,
        metrics,
        cfg.learned_lr,
        sizes=sizes,
        total_steps=plan.total_steps,
        refresh=refresh,
    )


def _warn_unordered(caches: list[TeacherCache], sizes: list[int]) -> None:
    """small-to-large orders the team by size; where sizes are missing or tie, team order decides: say so."""
    missing = [c.name for c, s in zip(caches, sizes, strict=True) if not s]
    tied = sorted({c.name for c, s in zip(caches, sizes, strict=True) if s and sizes.count(s) > 1})
    if missing:
        log.warning("small-to-large: no recorded size for %s; they come first, in team order", ", ".join(missing))
    if tied:
        log.warning("small-to-large: %s have the same size; they keep team order", ", ".join(tied))


def fixed_sampler(
    sampling: str, caches: list[TeacherCache], seed: int, temperature: float, metrics: list[float] | None = None
) -> Sampler:
    """The distributions known before training (uniform, weights=..., teacher-rank, student-rank from pilot
    `metrics`), for callers without the training loop's pilots, held-out rows or step budget (the Trainer
    integration)."""
    kind = sampling.split("=", 1)[0]
    if kind in LOOP_BOUND or (kind == "student-rank" and metrics is None):
        raise SkdError(
            f"--sampling {kind} needs the training loop's pilots, held-out rows or step budget: use "
            "`skdcache train`, or pass a ready sampler"
        )
    return _build(sampling, caches, seed, temperature, metrics)


def _build(sampling: str, caches: list[TeacherCache], seed: int, temperature: float, metrics, lr=0.1, **loop):
    """`build_sampler` with the team's validation metrics for teacher-rank; its refusals as one-line errors."""
    if sampling == "teacher-rank":
        missing = [c.name for c in caches if not c.manifest.metric]
        if missing:
            raise SkdError(f"teacher-rank needs a validation metric; {missing} were cached without labelled eval")
        metrics = [c.manifest.metric.value for c in caches]
    try:
        return build_sampler(sampling, len(caches), seed, metrics=metrics, temperature=temperature, lr=lr, **loop)
    except ValueError as exc:
        raise SkdError(f"--sampling {sampling}: {exc}") from exc
