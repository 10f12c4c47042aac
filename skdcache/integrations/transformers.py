"""Stochastic KD from the cache inside `transformers.Trainer`: `SkdTrainer` is a drop-in Trainer.

Per optimizer step it draws ONE teacher with `TeacherDraws` (the same seeded draw `skdcache train` makes for
that step, so every rank of a torchrun / Accelerate launch draws the same teacher), reads only that teacher's
targets for the batch's rows, and returns `objective.step_loss`. Batches are built by skdcache's own
`student_batch`, so token-level students are scored at exactly the cached positions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer

from skdcache.distill.objective import build_objective, build_projectors, step_loss
from skdcache.errors import SkdError
from skdcache.fields import check_values
from skdcache.integrations.rows import ROW_COLUMN, open_dataset_team, with_row_index
from skdcache.models import ARCH_SUFFIX_TO_HEAD
from skdcache.sampling.base import Sampler
from skdcache.sampling.routing import routing_for_run
from skdcache.targets.sources import CachedTargets, TeacherDraws
from skdcache.teacher.reduce import float32_vocab_projection
from skdcache.training.config import TrainConfig
from skdcache.training.loader import StepSchedule, StudentInputs, model_inputs, student_batch
from skdcache.training.plan import fixed_sampler
from skdcache.training.student import check_student_matches_teachers, student_inputs

__all__ = ["SkdCollator", "SkdTrainer", "StepOrderSampler", "with_row_index"]

CACHE_MODES = ("skd", "single", "average", "route", "weight")


class SkdCollator:
    """Collate `skd_row` features into skdcache's student batch (plus the rows); other features (an eval set
    the user tokenised) go to `fallback` unchanged."""

    def __init__(self, inputs: StudentInputs, fallback: Callable | None):
        self.inputs, self.fallback = inputs, fallback

    def __call__(self, features: list[dict]) -> dict:
        if ROW_COLUMN not in features[0]:
            if self.fallback is None:
                raise SkdError("features without skd_row and no data_collator for them: pass data_collator=")
            return self.fallback(features)
        rows = np.asarray([int(f[ROW_COLUMN]) for f in features], dtype=np.int64)
        if self.inputs.head != "sequence":
            self._check_tokens(features, rows)
        batch = student_batch(self.inputs, rows)
        batch[ROW_COLUMN] = torch.from_numpy(rows)
        return batch

    def _check_tokens(self, features: list[dict], rows: np.ndarray) -> None:
        """Token targets sit at cached positions: refuse input_ids that are not the cached tokenisation."""
        for f, r in zip(features, rows, strict=True):
            if "input_ids" not in f:
                return
            ids = list(f["input_ids"])
            while ids and ids[-1] == self.inputs.pad_id and len(ids) > len(self.inputs.enc.ids[r]):
                ids.pop()
            if ids != list(self.inputs.enc.ids[r]):
                raise SkdError(
                    f"row {r}: input_ids differ from the tokenisation the targets were cached for; drop the "
                    f"input_ids column (SkdTrainer tokenises the text itself) or re-run precompute"
                )


class StepOrderSampler(torch.utils.data.Sampler):
    """Rows in `skdcache train`'s order: per pass over the data a permutation seeded by (seed, pass), ragged
    batch dropped, the batches running on from one pass to the next.

    A Trainer epoch is `skdcache train`'s: `max(1, batches per pass // grad_accum)` optimizer steps of
    `grad_accum` batches each (a step may take the end of one pass and the start of the next), so the Trainer
    never ends an epoch on a short accumulation and `num_train_epochs` gives the same step count as `--epochs`.
    Yields the global batches back to back; Accelerate gives rank r the r-th per-device slice of each, the
    same contiguous slice `skdcache train` gives it.
    """

    def __init__(self, n_rows: int, global_batch: int, seed: int, grad_accum: int = 1):
        self.schedule = StepSchedule(n_rows, global_batch, seed)
        self.batches = max(1, self.schedule.steps_per_epoch // grad_accum) * grad_accum  # per Trainer epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches * self.schedule.batch_size

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.batches
        for step in range(first, first + self.batches):
            yield from (int(r) for r in self.schedule.rows_for(step))


class SkdTrainer(Trainer):
    """A `transformers.Trainer` whose training loss is skdcache's KD objective against cached teachers.

    Args:
        cache: the cache root `skdcache precompute` wrote to (local).
        teachers: team by name (default: every teacher cached for exactly these rows).
        mode: skd (one sampled teacher per step), single, average (all teachers' mean), route (one teacher per
            row, from cached per-row scores) or weight (every teacher, per-row weights), as `skdcache train`.
        sampling: skd: uniform | teacher-rank | weights=a,b,c; route / weight: a per-row rule (min-ce,
            confidence[=TAU], ca-mkd, smallest-correct, uniform; weight: ca-mkd, confidence, uniform,
            closest-correct), as `skdcache train --sampling` (docs/sampling.md).
        temperature, alpha: the KD temperature and the weight of the KD term (1 - alpha weighs the labels).
        beta, layer_map: the weight of the hidden-state loss against teachers cached with hidden layers, and its
            student:teacher layer map, as `skdcache train --beta/--layer-map`. Its projections are trained
            with the model: they are a submodule of it (`skd_projector`), so checkpoints and resumes keep them.
        max_length: the student's truncation; default the cache's (token-level targets require it).
        chat_template: chat data: the template (text or file) to render the messages with; default the
            tokenizer's. It must be the one the caches were computed with.
        sampler: a ready `skdcache.sampling.categorical` sampler, instead of `sampling`.

    `train_dataset` is the `datasets.Dataset` the caches were computed from (its text/label columns, in order);
    the `skd_row` column is added when missing. Eval datasets are used as usual (labels-only loss).

    Steps are budgeted as in `skdcache train` (`StepOrderSampler`): every optimizer step takes
    `gradient_accumulation_steps` full batches, an epoch is `max(1, floor(batches per pass / accumulation))`
    steps, and `num_train_epochs=E` trains `ceil(E * that)` steps. `label_smoothing_factor` is refused.
    """

    loss_is_scaled_for_ga = False  # training_step divides by the accumulation steps, as skdcache train does

    def __init__(
        self,
        *args,
        cache: str | Path,
        teachers: list[str] | None = None,
        mode: str = "skd",
        sampling: str = "uniform",
        sampling_temperature: float = 0.05,
        temperature: float = 2.0,
        alpha: float = 0.5,
        beta: float = 0.0,
        layer_map: str | None = None,
        max_length: int | None = None,
        sampler: Sampler | None = None,
        chat_template: str | None = None,
        **kwargs,
    ):
        check_values(
            TrainConfig, temperature=temperature, alpha=alpha, beta=beta, sampling_temperature=sampling_temperature
        )
        if mode not in CACHE_MODES:
            raise SkdError(f"mode {mode!r}: SkdTrainer reads caches, choose one of {', '.join(CACHE_MODES)}")
        dataset = kwargs.pop("train_dataset", None)
        if dataset is None:
            raise SkdError("SkdTrainer needs train_dataset= (the datasets.Dataset the caches were computed from)")
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None:
            raise SkdError("SkdTrainer needs processing_class= (the student's tokenizer)")
        rows, caches = open_dataset_team(dataset, cache, teachers, mode, tokenizer, chat_template)
        head = caches[0].targets.head
        max_length = max_length or caches[0].targets.max_length
        fallback = kwargs.pop("data_collator", None) or DataCollatorWithPadding(tokenizer)
        self.skd_inputs = student_inputs(tokenizer, rows, head, max_length, caches)
        super().__init__(
            *args, train_dataset=with_row_index(dataset), data_collator=SkdCollator(self.skd_inputs, fallback), **kwargs
        )
        if self.args.label_smoothing_factor:  # the eval loss would smooth, the training loss (as skdcache's) not
            raise SkdError(
                f"label_smoothing_factor={self.args.label_smoothing_factor}: SkdTrainer trains on KD plus plain "
                "cross-entropy, as skdcache train does; set label_smoothing_factor=0"
            )
        self._check_rows(dataset)
        float32_vocab_projection(self.model, head)  # under autocast (bf16=True), as the teachers' logits were
        model_config = _base_model(self.model).config
        _check_head(self.model, head)
        check_student_matches_teachers(caches, tokenizer, max_length, beta, getattr(model_config, "num_labels", None))
        task = "lm" if head != "sequence" else rows.task
        if mode in ("route", "weight", "average") and beta > 0:
            raise SkdError(f"beta applies to one teacher per step, not mode {mode!r}; drop beta or use mode skd")
        self.objective = build_objective(
            head,
            task,
            caches,
            model_config,
            temperature=temperature,
            alpha=alpha,
            beta=beta,
            layer_map=layer_map,
            mode=mode,
            sampling=sampling,
        )
        self.skd_projector = _attach_projector(self, caches, model_config.hidden_size)
        self.teacher_names = [c.name for c in caches]
        if sampler is not None and not isinstance(sampler, Sampler):
            members = ("kind", "adaptive", "sample", "probs", "observe", "state_dict", "load_state_dict")
            missing = [a for a in members if not hasattr(sampler, a)]
            raise SkdError(f"sampler= lacks {', '.join(missing)} of skdcache.sampling.base.Sampler; implement them")
        if mode == "skd" and sampler is None:
            sampler = fixed_sampler(sampling, caches, self.args.seed, sampling_temperature)
        if mode == "single" and len(caches) != 1:
            raise SkdError(f"mode single needs exactly one teacher, got {self.teacher_names}; pass teachers=[NAME]")
        ids = self.skd_inputs.enc.ids if head != "sequence" else None  # token heads are scored on their tokens
        table, routing = routing_for_run(mode, sampling, caches, head, self.skd_inputs.labels, ids)
        ga = self.args.gradient_accumulation_steps
        self.draws = TeacherDraws(mode, sampler, len(caches), ga, table, self.args.seed, routing)
        self.source = CachedTargets([str(c.path) for c in caches])
        self._drawn: Counter[str] = Counter()  # adaptive samplers' steps and route's rows: not a function of the step
        self.skd_history: list[dict] = []  # one record per micro-batch: step, teacher, loss and its parts

    @property
    def teacher_histogram(self) -> Counter[str]:
        """Teachers drawn, one per optimizer step, over every finished step (those before a resume too); route:
        rows per teacher, over the steps this process ran."""
        if not self.draws.fixed or self.draws.mode in ("route", "weight"):
            return self._drawn
        micro = self.args.gradient_accumulation_steps
        choices = (self.draws(step * micro).single for step in range(self.state.global_step))
        return Counter(self.teacher_names[c] for c in choices if c is not None)

    def _check_rows(self, dataset) -> None:
        if ROW_COLUMN in dataset.column_names and list(dataset[ROW_COLUMN]) != list(range(len(dataset))):
            raise SkdError(f"{ROW_COLUMN} is not 0..n-1: call with_row_index last, after any filter or shuffle")

    def _set_signature_columns_if_needed(self) -> None:
        """Keep `skd_row` through the Trainer's removal of unused columns (users need not set anything)."""
        super()._set_signature_columns_if_needed()
        if ROW_COLUMN not in self._signature_columns:
            self._signature_columns.append(ROW_COLUMN)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        return StepOrderSampler(len(dataset), global_batch, self.args.seed, self.args.gradient_accumulation_steps)

    def get_eval_dataloader(self, eval_dataset=None):
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(data, (str, dict)) and ROW_COLUMN in getattr(data, "column_names", ()):
            raise SkdError("eval_dataset carries skd_row: pass it without with_row_index (evaluation uses labels)")
        return super().get_eval_dataloader(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if ROW_COLUMN not in inputs:  # an eval batch: the model's own loss on the labels
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rows = inputs[ROW_COLUMN].cpu().numpy()
        choice = self.draws(self.state.global_step * self.args.gradient_accumulation_steps, rows)
        device = inputs["input_ids"].device
        targets = [t.to(device) for t in self.source.targets(rows, choice)]
        outputs = model(**model_inputs(inputs), output_hidden_states=self.objective.beta > 0)
        loss, parts = step_loss(self.objective, outputs, inputs, targets, self.skd_projector, choice.single)
        if model.training:
            record = {"step": self.state.global_step + 1, "loss": float(loss.detach()), **parts}
            if choice.single is not None:
                record["teacher"] = self.teacher_names[choice.single]
                self._drawn[record["teacher"]] += 1
            if choice.per_row is not None:  # route: this micro-batch's rows per teacher ("-": no teacher)
                record["teacher_rows"] = dict(Counter(self.teacher_names[t] if t >= 0 else "-" for t in choice.per_row))
                self._drawn.update(record["teacher_rows"])
            self.skd_history.append(record)
        return (loss, outputs) if return_outputs else loss


def _attach_projector(trainer: SkdTrainer, caches, student_width: int):
    """beta > 0: the learned student-to-teacher projections, made a submodule of the model so the Trainer's
    optimizer, checkpoints and device placement take them along."""
    projector = build_projectors(trainer.objective, caches, student_width)
    if projector is None:
        return None
    optimizer = trainer.optimizer
    if optimizer is not None:
        raise SkdError(
            "beta > 0 trains hidden-state projections with the model: let the Trainer build the optimizer "
            "(drop optimizers=)"
        )
    model = _base_model(trainer.model)
    model.add_module("skd_projector", projector.to(next(model.parameters()).device))
    return projector


def _base_model(model):
    """The transformers model under a PEFT wrapper (its config and class name say the head)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _check_head(model, head: str) -> None:
    name = type(_base_model(model)).__name__
    have = next((h for suffix, h in ARCH_SUFFIX_TO_HEAD.items() if name.endswith(suffix)), None)
    if have is not None and have != head:
        raise SkdError(f"the caches hold {head} targets but the model is a {name}: use a {head} student")
