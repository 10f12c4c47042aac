"""The `skdcache train` recipe, top to bottom: plan -> sampler -> student -> targets -> loop -> record.

`prepare` builds a run in dependency order; `fit` is the loop: sample a teacher, read its targets, run the
student, compute the loss, step, evaluate. In cache modes (skd, single, average) no teacher model is ever
constructed: targets come from the cache through the same `TargetSource` interface live teachers implement.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skdcache.device import autocast_dtype, pick_device
from skdcache.distill.objective import build_objective, build_projectors, soft_loss, step_loss
from skdcache.distributed import (
    average_gradients,
    broadcast_module,
    from_rank0,
    mean_over_ranks,
    rank_and_size,
)
from skdcache.errors import SkdError
from skdcache.sampling.routing import routing_for_run
from skdcache.targets.live import LiveTargets
from skdcache.targets.sources import CachedTargets, TargetSource, TeacherChoice, TeacherDraws
from skdcache.teacher.reduce import float32_vocab_projection
from skdcache.training import checkpoint
from skdcache.training.checkpoint import TrainState
from skdcache.training.config import MODES, TrainConfig
from skdcache.training.evaluate import evaluate, heldout_loss
from skdcache.training.loader import StepBatches, model_inputs, step_loader, student_batch
from skdcache.training.plan import plan_run, sampler_for_run
from skdcache.training.run_record import Run, record_run, save_student
from skdcache.training.student import (
    StudentSpec,
    build_student,
    check_student_matches_teachers,
    student_inputs,
)

log = logging.getLogger("skdcache")

__all__ = ["MODES", "Run", "TrainConfig", "fit", "prepare", "train"]


def train(cfg: TrainConfig) -> dict:
    """Python API of `skdcache train`: returns the run record also written to OUTPUT/run.json.

    A finished run of the same settings in `cfg.output` is returned as it is (rerunning a command is safe); a
    finished run of other settings is refused unless `cfg.overwrite` (or `cfg.resume`).
    """
    cfg.check()
    finished = cfg.finished_record()
    if finished is not None:
        log.info("%s holds this finished run: reused (pass --overwrite to train it again)", cfg.output)
        return {**finished, "rank": rank_and_size()[0]}
    return fit(prepare(cfg))


def prepare(cfg: TrainConfig, run_pilot: Callable[[TrainConfig], dict] | None = None) -> Run:
    """Build a run: its plan, teacher distribution (student-rank pilots run here, through `run_pilot`),
    checked student and objective, and the source of its teacher targets."""
    cfg.check()
    rank, world = rank_and_size()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    plan = plan_run(cfg, rank, world)
    with torch.random.fork_rng(devices=[]):  # pilots must not shift this run's random stream
        sampler = sampler_for_run(cfg, plan, run_pilot or train)

    spec = StudentSpec.parse(cfg.student, cfg.student_layers)
    model, tokenizer = build_student(
        spec, plan.head, plan.num_labels, plan.rows.label_names, plan.rows.task, cfg.trust_remote_code
    )
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device)
    float32_vocab_projection(model, plan.head)  # under autocast, as the teachers' logits were computed
    check_student_matches_teachers(plan.caches, tokenizer, cfg.max_length, cfg.beta, plan.num_labels)
    objective = build_objective(
        plan.head,
        plan.task,
        plan.caches,
        model.config,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        beta=cfg.beta,
        layer_map=cfg.layer_map,
        mode=cfg.mode,
        sampling=cfg.sampling,
    )
    projector = build_projectors(objective, plan.caches, model.config.hidden_size)
    projector = projector.to(device) if projector is not None else None
    if world > 1:
        broadcast_module(model)
        if projector is not None:
            broadcast_module(projector)
        # same initial weights, but each rank its own dropout masks
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, rank]).generate_state(1)[0]))

    source: TargetSource = CachedTargets([str(c.path) for c in plan.caches])
    if cfg.mode == "online":
        moved = dict(t.split("=", 1) for t in cfg.teacher_path or [])
        source = LiveTargets(plan.caches, plan.rows, device, cfg.full_logits, cfg.trust_remote_code, moved)
    inputs = student_inputs(tokenizer, plan.rows, plan.head, cfg.max_length, plan.caches)
    labelled = plan.eval_rows is not None and (plan.eval_rows.labels is not None or plan.head != "sequence")
    eval_inputs = (
        student_inputs(tokenizer, plan.eval_rows, plan.head, cfg.max_length, plan.caches) if labelled else None
    )
    ids = inputs.enc.ids if plan.head != "sequence" else None
    table, routing = routing_for_run(cfg.mode, cfg.sampling, plan.caches, plan.head, inputs.labels, ids)
    draws = TeacherDraws(cfg.mode, sampler, len(plan.caches), cfg.grad_accum, table, cfg.seed, routing)
    test_inputs = None
    if plan.test_rows is not None:
        test_inputs = student_inputs(tokenizer, plan.test_rows, plan.head, cfg.max_length, plan.caches)
    return Run(
        cfg=cfg,
        plan=plan,
        device=device,
        rank=rank,
        world=world,
        sampler=sampler,
        draws=draws,
        model=model,
        tokenizer=tokenizer,
        objective=objective,
        projector=projector,
        source=source,
        inputs=inputs,
        eval_inputs=eval_inputs,
        test_inputs=test_inputs,
    )


def fit(run: Run) -> dict:
    """The loop: one optimizer step per `grad_accum` micro-batches, evaluation and a checkpoint every
    `eval_every` steps, and the run record at the end."""
    cfg, model, plan = run.cfg, run.model, run.plan
    run.out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not cfg.resume and run.rank == 0:  # the replaced run's record must not outlive it
        (run.out / "run.json").unlink(missing_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(run.projector.parameters()) if run.projector is not None else []
    optimizer, scheduler = _optimizer(params, cfg, plan.total_steps)
    state = TrainState()
    if cfg.resume:
        try:
            state = checkpoint.load(
                run.out,
                model=model,
                projector=run.projector,
                optimizer=optimizer,
                scheduler=scheduler,
                sampler=run.sampler,
                device=run.device,
                rank=run.rank,
                world=run.world,
                seed=cfg.seed,
            )
        except ValueError as exc:
            raise SkdError(f"--resume {run.out}: {exc}") from None
    log_path = run.out / "metrics.jsonl" if run.rank == 0 else Path(os.devnull)
    metrics_log = open(log_path, "a" if cfg.resume else "w", buffering=1)  # line-buffered: tail -f works
    micro = cfg.grad_accum
    read_ahead = (run.draws, run.source) if run.draws.fixed and run.source.read_ahead else None
    part = (run.rank, run.world)
    batches = StepBatches(run.inputs, plan.schedule, state.step * micro, plan.total_steps * micro, part, read_ahead)
    loader = step_loader(batches, cfg.num_workers, cfg.seed)
    amp = autocast_dtype(run.device)
    show = cfg.progress and run.rank == 0
    bar = tqdm(total=plan.total_steps, initial=state.step, desc=f"train {cfg.mode}", unit="step", disable=not show)
    t0, loop_t0 = time.perf_counter() - state.elapsed, time.perf_counter()
    if run.sampler is not None:  # adaptive samplers measure where the student starts (e.g. its held-out loss)
        run.sampler.observe(state.step, StudentFeedback(run, None))
    routed: Counter = Counter()  # route: rows per teacher in the current optimizer step
    model.train()
    for i, batch in enumerate(loader):
        # 1. sample a teacher (per row: route); a loader that read targets ahead sends its draw with the batch
        choice = batch["choice"] if "choice" in batch else run.draws(batch["step"], batch["rows"].numpy())
        targets = batch.get("targets")
        if targets is None:  # 2. read its targets (when the loader could not read them ahead)
            targets = run.source.targets(batch["rows"].numpy(), choice)
        inputs = {k: v.to(run.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        with torch.autocast(run.device.type, dtype=amp, enabled=amp is not None):  # 3. run the student
            outputs = model(**model_inputs(inputs), output_hidden_states=cfg.beta > 0)
        targets = [t.to(run.device) for t in targets]
        loss, parts = step_loss(run.objective, outputs, inputs, targets, run.projector, choice.single)  # 4. loss
        (loss / micro).backward()
        routed.update(plan.names[t] if t >= 0 else "-" for t in choice.per_row or ())
        if (i + 1) % micro:
            continue
        average_gradients(params)  # 5. step
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        loss_value, *part_values = mean_over_ranks([float(loss.detach()), *parts.values()], run.device)
        record = {"step": state.step, "loss": loss_value, **dict(zip(parts, part_values, strict=True))}
        record["lr"] = scheduler.get_last_lr()[0]
        if choice.single is not None:
            state.histogram[plan.names[choice.single]] += 1
            record["teacher"] = plan.names[choice.single]
        if choice.per_row is not None:  # route: this rank's rows per teacher over the step ("-": no teacher)
            record["teacher_rows"] = dict(routed)
            state.histogram.update(routed)
            routed.clear()
        probs = run.sampler.observe(state.step, StudentFeedback(run, choice.single)) if run.sampler else None
        if probs is not None:  # an adaptive sampler moved (learned: every step; student-fit: at its refreshes)
            record["probs"] = probs
            state.history.append(probs)
        metrics_log.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", teacher=record.get("teacher", "-"), refresh=False)
        if state.step % plan.eval_every == 0 or state.step == plan.total_steps:  # 6. evaluate, checkpoint
            state.elapsed = time.perf_counter() - t0
            evaluate_and_checkpoint(run, state, optimizer, scheduler, metrics_log)
            model.train()
        if state.step >= plan.total_steps:
            break
    bar.close()
    metrics_log.close()
    return record_run(run, state, time.perf_counter() - t0, time.perf_counter() - loop_t0)


def _optimizer(params: list, cfg: TrainConfig, total_steps: int):
    """AdamW with linear warm-up and linear decay to zero."""
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def factor(s: int) -> float:
        return min((s + 1) / max(1, warmup), max(0.0, (total_steps - s) / max(1, total_steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class StudentFeedback:
    """What an adaptive sampler may ask about the student after a step (`sampling.base.Feedback`): each value
    is computed on the held-out rows only when asked, and is rank 0's on every rank."""

    def __init__(self, run: Run, teacher: int | None):
        self.run, self.teacher = run, teacher

    def heldout_loss(self) -> float:
        run = self.run
        return from_rank0(heldout_loss(run.model, run.inputs, run.plan.heldout, run.objective, run.device), run.device)

    @torch.no_grad()
    def teacher_losses(self) -> list[float]:
        """The current student's KD loss against each teacher's cached targets on the held-out rows."""
        run = self.run
        run.model.eval()
        batch = {k: v.to(run.device) for k, v in student_batch(run.inputs, run.plan.heldout).items()}
        logits = run.model(**model_inputs(batch)).logits
        losses = []
        for t in range(len(run.caches)):
            (targets,) = run.source.targets(run.plan.heldout, TeacherChoice((t,)))
            loss = float(soft_loss(run.objective, logits, batch, [targets.to(run.device)]))
            losses.append(from_rank0(loss, run.device))
        run.model.train()
        return losses


def evaluate_and_checkpoint(run: Run, state: TrainState, optimizer, scheduler, metrics_log) -> None:
    """Rank 0 evaluates, keeps the best student (by the validation metric) and writes the checkpoint."""
    if run.rank == 0:
        result = evaluate(run.model, run.eval_inputs, run.objective, run.device) if run.eval_inputs else {}
        state.last_eval = (state.step, result)
        if result:
            metrics_log.write(json.dumps({"step": state.step, "eval": result}) + "\n")
            metrics_log.flush()
            key = result["primary"]
            if state.best is None or result[key] > state.best[key]:
                state.best = {**result, "step": state.step}
                save_student(run, run.out / "student")
        elif state.best is None or state.step == run.plan.total_steps:
            save_student(run, run.out / "student")
    checkpoint.save(run.out, state, run.model, run.projector, optimizer, scheduler, run.sampler, run.rank, run.world)
