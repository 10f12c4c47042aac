"""The `skdcache train` recipe: sample a teacher, read its targets, run the student, compute the loss, step.

Reads top to bottom: `Trainer.__init__` resolves data, caches and the student; `train()` is the loop.
In cache modes (skd, single, average) no teacher model is ever constructed: targets come from the cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from skdcache.cache.catalog import find_teacher_caches
from skdcache.cache.reader import Targets, TeacherCache
from skdcache.cache.remote import RemoteRoot, is_url
from skdcache.cache.store import default_cache_root
from skdcache.data import DataSpec, available_splits, load_rows, tokenize
from skdcache.distill import Objective, step_loss
from skdcache.distributed import (
    average_gradients,
    barrier,
    broadcast_module,
    from_rank0,
    from_rank0_object,
    mean_over_ranks,
    rank_and_size,
)
from skdcache.errors import SkdError
from skdcache.evaluate import evaluate
from skdcache.loader import StepBatches, StepSchedule, StudentInputs, step_loader, student_batch
from skdcache.losses import HiddenProjector, uniform_layer_map
from skdcache.online import OnlineTeachers
from skdcache.precompute import autocast_dtype, pick_device
from skdcache.sampling import LearnedSampler, build_sampler, describe
from skdcache.student import StudentSpec, build_student, count_parameters

log = logging.getLogger("skdcache")
MODES = ("skd", "single", "average", "none", "online")


@dataclass
class TrainConfig:
    """Every flag of `skdcache train`; saved whole in run.json."""

    data: DataSpec
    student: str
    output: str
    cache: str | None = None
    teachers: list[str] | None = None  # None = every teacher cached for this data
    mode: str = "skd"
    sampling: str = "uniform"  # uniform | teacher-rank | student-rank | learned | weights=a,b,c
    sampling_temperature: float = 0.05
    student_layers: str | None = None
    student_head: str = "auto"
    freeze_embeddings: bool = False  # word embeddings are most of a small BERT; freezing them halves CPU step time
    eval_split: str | None = "validation"
    test_split: str | None = None  # evaluated once at the end (report-only: never used to pick checkpoints)
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.0
    layer_map: str | None = None  # "s:t,s:t" over hidden_states indices
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    max_length: int = 128
    seed: int = 0
    num_workers: int = 1
    device: str = "auto"
    pilot_steps: int | None = None  # student-rank: budget of each single-teacher pilot
    full_logits: bool = False  # online + token heads: distil from the full live distribution (P5 reference)
    learned_lr: float = 0.1  # in units of the running advantage RMS (see LearnedSampler)
    resume: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        if cfg.mode not in MODES:
            raise SkdError(f"--mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
        self.cfg = cfg
        self.out = Path(cfg.output)
        # torchrun: every rank trains a replica on its slice of each global batch; rank 0 writes the files
        self.rank, self.world = rank_and_size()
        if cfg.batch_size % self.world:
            raise SkdError(f"--batch-size {cfg.batch_size} is the global batch: use a multiple of {self.world} ranks")
        self.device = pick_device(cfg.device)
        self.root = Path(cfg.cache).expanduser() if cfg.cache and not is_url(cfg.cache) else default_cache_root()
        torch.manual_seed(cfg.seed)

        # data: the same rows, checked against every teacher cache before step 1
        self.rows = load_rows(cfg.data)
        self.eval_rows = None
        if cfg.eval_split and cfg.eval_split in available_splits(cfg.data):
            self.eval_rows = load_rows(replace(cfg.data, split=cfg.eval_split, limit=None))

        # teachers: cache handles only (and live models in `online` mode)
        self.caches = self._open_caches()
        self.head = self._student_head()
        self.model, self.tokenizer = build_student(
            StudentSpec.parse(cfg.student, cfg.student_layers),
            self.head,
            self._num_labels(),
            self.rows.label_names,
            self.rows.task,
            cfg.trust_remote_code,
        )
        if cfg.freeze_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)
        self.model.to(self.device)
        self._check_student_matches_teachers()
        self.objective = self._objective()
        self.projector = self._projectors()
        if self.world > 1:
            broadcast_module(self.model)
            if self.projector is not None:
                broadcast_module(self.projector)
            # same initial weights, but each rank its own dropout masks
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, self.rank]).generate_state(1)[0]))
        if cfg.full_logits and (cfg.mode != "online" or self.head == "sequence"):
            raise SkdError("--full-logits is for --mode online with MLM/causal teachers (the cache stores top-k)")
        self.online = OnlineTeachers(self.caches, self.rows, cfg, self.device) if cfg.mode == "online" else None

        self.inputs = self._student_inputs(self.rows)
        labelled_eval = self.eval_rows is not None and (self.eval_rows.labels is not None or self.head != "sequence")
        self.eval_inputs = self._student_inputs(self.eval_rows) if labelled_eval else None
        heldout = None
        if cfg.mode in ("skd", "online") and cfg.sampling == "learned":
            heldout, train_rows = self._split_heldout()
        else:
            train_rows = None
        self.heldout = heldout
        self.schedule = StepSchedule(len(self.rows), cfg.batch_size, cfg.seed, train_rows)
        if self.schedule.batch_size % self.world:
            raise SkdError(
                f"{len(self.rows)} rows give batches of {self.schedule.batch_size}: too few for {self.world} ranks"
            )
        per_epoch = max(1, self.schedule.steps_per_epoch // cfg.grad_accum)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
        self.eval_every = cfg.eval_every or per_epoch
        self.sampler = self._sampler()

    # ---- setup helpers -------------------------------------------------------------------------------------
    def _open_caches(self) -> list[TeacherCache]:
        cfg = self.cfg
        if cfg.mode == "none":
            return []
        if is_url(cfg.cache):  # rank 0 chooses the groups, so every rank trains from the same ones
            remote = RemoteRoot(cfg.cache)
            keys = remote.choose(self.rows.fingerprint, cfg.teachers) if self.rank == 0 else None
            keys = from_rank0_object(keys)
            paths = {name: remote.fetch(self.rows.fingerprint, key) for name, key in keys.items()}
        else:
            paths = find_teacher_caches(self.root, self.rows.fingerprint, cfg.teachers)
        if cfg.mode == "single" and len(paths) != 1:
            raise SkdError(f"--mode single needs exactly one teacher, got {list(paths)}; pass --teachers NAME")
        if not paths:
            raise SkdError(
                f"no teacher cached for this data in {cfg.cache or self.root}; run `skdcache precompute` first"
            )
        caches = [TeacherCache(p) for p in paths.values()]
        for c in caches:
            c.check_dataset(self.rows.fingerprint, len(self.rows))
        heads = {c.targets.head for c in caches}
        if len(heads) > 1:
            raise SkdError(f"teachers mix heads {sorted(heads)}; distil from teachers of one kind at a time")
        for c in caches:
            if c.targets.head == "sequence" and c.manifest.dataset.label_names != self.rows.label_names:
                raise SkdError(f"teacher {c.name} was cached with labels {c.manifest.dataset.label_names}")
        return caches

    def _student_head(self) -> str:
        if self.cfg.student_head != "auto":
            return self.cfg.student_head
        if self.caches:
            return self.caches[0].targets.head
        if self.rows.task == "unlabelled":
            raise SkdError("unlabelled data and no teacher: pass --student-head mlm|causal")
        return "sequence"

    def _num_labels(self) -> int | None:
        """The data's label count, or the teachers' when the data is unlabelled (pure distillation)."""
        if self.rows.num_labels is not None or self.head != "sequence":
            return self.rows.num_labels
        if not self.caches:
            raise SkdError("unlabelled data: a sequence student needs --label-column or cached teachers")
        return self.caches[0].manifest.teacher.num_labels

    def _check_student_matches_teachers(self) -> None:
        from skdcache.cache.fingerprint import tokenizer_hash

        for c in self.caches:
            t = c.targets
            needs_same_tokens = t.token_level or (self.cfg.beta > 0 and t.hidden_layers and t.hidden_tokens == "all")
            if needs_same_tokens and c.manifest.tokenizer_hash != tokenizer_hash(self.tokenizer):
                raise SkdError(
                    f"teacher {c.name}'s token-level/hidden targets use another tokenizer than the student; "
                    f"use a student with the teacher's tokenizer or sequence-level targets"
                )
            if needs_same_tokens and t.max_length != self.cfg.max_length:
                raise SkdError(f"teacher {c.name} was cached with --max-length {t.max_length}; use the same here")
            if t.head == "sequence" and c.manifest.teacher.num_labels != self._num_labels():
                raise SkdError(
                    f"teacher {c.name} has {c.manifest.teacher.num_labels} labels, the data {self.rows.num_labels}"
                )

    def _objective(self) -> Objective:
        cfg = self.cfg
        task = "lm" if self.head != "sequence" else self.rows.task
        layer_maps: tuple = ()
        hidden_tokens = None
        if cfg.beta > 0:
            cached = [c.targets for c in self.caches]
            if not cached or not all(t.hidden_layers for t in cached):
                raise SkdError("--beta > 0 needs teachers cached with --hidden-layers; precompute them with it")
            if cfg.mode == "average":
                raise SkdError("--beta applies to one teacher per step; use --mode skd/single/online with it")
            hidden_tokens = cached[0].hidden_tokens
            if any(t.hidden_tokens != hidden_tokens for t in cached):
                raise SkdError("teachers were cached with different --hidden-tokens; precompute them alike")
            layer_maps = tuple(tuple(self._layer_map(c)) for c in self.caches)
        return Objective(self.head, task, cfg.temperature, cfg.alpha, cfg.beta, layer_maps, hidden_tokens)

    def _layer_map(self, cache: TeacherCache) -> list[tuple[int, int]]:
        """(student hidden_states index, position in the teacher's cached layers): explicit, or uniform by depth."""
        cached_layers = cache.targets.hidden_layers
        n_s = self.model.config.num_hidden_layers
        n_t = cache.manifest.teacher.num_hidden_layers
        if self.cfg.layer_map:
            pairs = [tuple(int(x) for x in p.split(":")) for p in self.cfg.layer_map.split(",")]
        else:
            pairs = [(s, t) for s, t in uniform_layer_map(n_s, n_t) if t in cached_layers]
            pairs = pairs or [(n_s, cached_layers[-1])]
        for s, t in pairs:
            if t not in cached_layers or not 0 <= s <= n_s:
                raise SkdError(
                    f"--layer-map {s}:{t}: student has 0..{n_s}, {cache.name} cached layers {list(cached_layers)}"
                )
        return [(s, cached_layers.index(t)) for s, t in pairs]

    def _projectors(self) -> torch.nn.ModuleList | None:
        """One learned projection per teacher and mapped layer (identity when the widths agree)."""
        if self.cfg.beta <= 0:
            return None
        width = self.model.config.hidden_size
        projectors = [
            HiddenProjector(width, c.manifest.teacher.hidden_size, len(m))
            for c, m in zip(self.caches, self.objective.layer_maps, strict=True)
        ]
        return torch.nn.ModuleList(projectors).to(self.device)

    def _student_inputs(self, rows) -> StudentInputs:
        enc = tokenize(self.tokenizer, rows, self.cfg.max_length)
        special = None
        prob, seed = 0.15, 0
        if self.head == "mlm":
            special = [self.tokenizer.get_special_tokens_mask(x, already_has_special_tokens=True) for x in enc.ids]
            if self.caches:
                prob, seed = self.caches[0].targets.mlm_probability, self.caches[0].targets.mask_seed
        return StudentInputs(
            enc, rows.labels, self.head, self.tokenizer.pad_token_id, self.tokenizer.mask_token_id, special, prob, seed
        )

    def _split_heldout(self) -> tuple[np.ndarray, np.ndarray]:
        """`learned` sampling's reward pool: a fixed slice of train rows the student never trains on."""
        n = len(self.rows)
        order = np.random.default_rng([self.cfg.seed, 7]).permutation(n)
        k = int(min(128, max(8, 0.02 * n)))
        return np.sort(order[:k]), np.sort(order[k:])

    def _sampler(self):
        cfg, n = self.cfg, len(self.caches)
        if cfg.mode not in ("skd", "online"):
            return None
        kind, weights, metrics = cfg.sampling, None, None
        if kind.startswith("weights="):
            kind, text = "weights", cfg.sampling.split("=", 1)[1]
            try:
                weights = [float(x) for x in text.split(",")]
            except ValueError:
                raise SkdError(
                    f"--sampling {cfg.sampling}: write weights=0.2,0.3,0.5 (one number per teacher)"
                ) from None
        if kind == "teacher-rank":
            missing = [c.name for c in self.caches if not c.manifest.metric]
            if missing:
                raise SkdError(f"teacher-rank needs a validation metric; {missing} were cached without labelled eval")
            metrics = [c.manifest.metric.value for c in self.caches]
        if kind == "student-rank":
            from skdcache.pilots import pilot_metrics

            with torch.random.fork_rng(devices=[]):  # pilots must not shift this run's random stream
                metrics = pilot_metrics(self)
        if kind == "learned":
            return LearnedSampler(n, cfg.seed, lr=cfg.learned_lr)
        try:
            return build_sampler(
                kind, n, cfg.seed, metrics=metrics, weights=weights, temperature=cfg.sampling_temperature
            )
        except ValueError as exc:
            raise SkdError(f"--sampling {cfg.sampling}: {exc}") from exc

    def teacher_for_step(self, micro_step: int) -> int | None:
        """Which cache the loader reads for a micro-batch (None: read in the loop or not at all).

        One teacher per optimizer step: every micro-batch of a gradient-accumulation step shares it.
        """
        step = micro_step // self.cfg.grad_accum
        mode = self.cfg.mode
        if mode == "none" or mode == "online" or isinstance(self.sampler, LearnedSampler):
            return None
        if mode == "average":
            return -1
        if mode == "single":
            return 0
        return self.sampler.sample(step)

    # ---- the loop ------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, model = self.cfg, self.model
        self.out.mkdir(parents=True, exist_ok=True)
        params = [p for p in model.parameters() if p.requires_grad]
        params += list(self.projector.parameters()) if self.projector else []
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: min(
                (s + 1) / max(1, warmup), max(0.0, (self.total_steps - s) / max(1, self.total_steps - warmup))
            ),
        )
        state = {"step": 0, "histogram": Counter(), "best": None, "history": [], "elapsed": 0.0}
        if cfg.resume:
            state = self._load_checkpoint(optimizer, scheduler, state)
        main = self.rank == 0
        log_path = self.out / "metrics.jsonl" if main else Path(os.devnull)
        metrics_log = open(log_path, "a" if cfg.resume else "w", buffering=1)  # line-buffered: tail -f works
        names = [c.name for c in self.caches]
        micro = cfg.grad_accum
        dataset = StepBatches(
            self.inputs,
            self.schedule,
            [str(c.path) for c in self.caches],
            self.teacher_for_step,
            state["step"] * micro,
            self.total_steps * micro,
            part=(self.rank, self.world),
        )
        loader = step_loader(dataset, cfg.num_workers, cfg.seed)
        amp = autocast_dtype(self.device)
        bar = tqdm(
            total=self.total_steps,
            initial=state["step"],
            desc=f"train {cfg.mode}",
            unit="step",
            disable=not (cfg.progress and main),
            dynamic_ncols=True,
        )
        t0, step_t0 = time.perf_counter() - state["elapsed"], time.perf_counter()
        prev_heldout = self._heldout_loss() if self.heldout is not None else None
        model.train()
        for i, batch in enumerate(loader):
            step = state["step"]
            teacher, targets = self._targets_for(batch)
            inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                outputs = model(**_model_inputs(inputs), output_hidden_states=cfg.beta > 0)
            loss, parts = step_loss(self.objective, outputs, inputs, _to(targets, self.device), self.projector, teacher)
            (loss / micro).backward()
            if (i + 1) % micro:
                continue
            average_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step = step + 1
            loss_value, *part_values = mean_over_ranks([float(loss.detach()), *parts.values()], self.device)
            record = {"step": step, "loss": loss_value, **dict(zip(parts, part_values, strict=True))}
            record["lr"] = scheduler.get_last_lr()[0]
            if teacher is not None and teacher >= 0:
                state["histogram"][names[teacher]] += 1
                record["teacher"] = names[teacher]
            if isinstance(self.sampler, LearnedSampler):
                loss_now = self._heldout_loss()
                self.sampler.update(teacher, from_rank0(prev_heldout - loss_now, self.device))
                prev_heldout = loss_now
                record["probs"] = [round(float(p), 4) for p in self.sampler.probs()]
                state["history"].append(record["probs"])
            metrics_log.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", teacher=record.get("teacher", "-"), refresh=False)
            if step % self.eval_every == 0 or step == self.total_steps:
                state["elapsed"] = time.perf_counter() - t0
                self._evaluate_and_save(step, state, optimizer, scheduler, metrics_log)
                model.train()
            if step >= self.total_steps:
                break
        bar.close()
        metrics_log.close()
        return self._finish(state, time.perf_counter() - t0, time.perf_counter() - step_t0)

    def _targets_for(self, batch: dict) -> tuple[int | None, Targets | list[Targets] | None]:
        """Targets the loader already read, or sampled now (learned sampling) / computed live (online)."""
        if self.cfg.mode == "none":
            return None, None
        teacher = batch["teacher"]
        if self.cfg.mode == "online":
            teacher = 0 if self.sampler is None else self.sampler.sample(batch["step"] // self.cfg.grad_accum)
            return teacher, self.online.targets(teacher, batch["rows"].numpy())
        if teacher is None:  # learned: the distribution changes every step, so sample here
            teacher = self.sampler.sample(batch["step"] // self.cfg.grad_accum)
            return teacher, self.caches[teacher].read(batch["rows"].numpy())
        return teacher, batch["targets"]

    @torch.no_grad()
    def _heldout_loss(self) -> float:
        """Labels-only loss on the held-out rows: the reward signal of `learned` sampling."""
        self.model.eval()
        batch = student_batch(self.inputs, self.heldout)
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        from skdcache.distill import label_loss

        value = float(label_loss(self.objective, self.model(**_model_inputs(inputs)).logits, inputs))
        self.model.train()
        return value

    def _evaluate_and_save(self, step, state, optimizer, scheduler, metrics_log) -> None:
        if self.rank == 0:
            self._evaluate_and_save_main(step, state, optimizer, scheduler, metrics_log)
        ckpt, mine = self.out / "checkpoint", f"rng-rank{self.rank}-step{step}.pt"
        if self.rank > 0:  # each rank keeps its own dropout stream, saved per step so a crash cannot mix steps
            ckpt.mkdir(parents=True, exist_ok=True)
            torch.save(_rng_state(), ckpt / mine)
        barrier()  # the other ranks wait for rank 0's files
        if self.rank > 0:  # only now is rank 0's trainer.json at this step, so older streams can go
            for old in ckpt.glob(f"rng-rank{self.rank}-step*.pt"):
                if old.name != mine:
                    old.unlink()

    def _evaluate_and_save_main(self, step, state, optimizer, scheduler, metrics_log) -> None:
        result = evaluate(self.model, self.eval_inputs, self.objective, self.device) if self.eval_inputs else {}
        self._last_eval = (step, result)
        if result:
            metrics_log.write(json.dumps({"step": step, "eval": result}) + "\n")
            metrics_log.flush()
            key = result["primary"]
            if state["best"] is None or result[key] > state["best"][key]:
                state["best"] = {**result, "step": step}
                self._save_student(self.out / "student")
        elif state["best"] is None or step == self.total_steps:
            self._save_student(self.out / "student")
        self._save_checkpoint(step, state, optimizer, scheduler)

    def _save_student(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def _save_checkpoint(self, step, state, optimizer, scheduler) -> None:
        ckpt = self.out / "checkpoint"
        ckpt.mkdir(exist_ok=True)
        payload = {
            "model": self.model.state_dict(),
            "projector": self.projector.state_dict() if self.projector else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = ckpt / "state.pt.partial"
        torch.save(payload, tmp)
        tmp.replace(ckpt / "state.pt")
        meta = {
            "step": step,
            "histogram": dict(state["histogram"]),
            "best": state["best"],
            "history": state["history"],
            "elapsed": state["elapsed"],
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "world_size": self.world,
        }
        (ckpt / "trainer.json").write_text(json.dumps(meta))

    def _load_checkpoint(self, optimizer, scheduler, state) -> dict:
        ckpt = self.out / "checkpoint"
        if not (ckpt / "state.pt").exists():
            log.info("no checkpoint in %s: starting from step 0", ckpt)
            return state
        payload = torch.load(ckpt / "state.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(payload["model"])
        if self.projector is not None:
            self.projector.load_state_dict(payload["projector"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        meta = json.loads((ckpt / "trainer.json").read_text())
        if self.world > 1 or meta.get("world_size", 1) > 1:
            self._load_rank_rng(ckpt, meta["step"], meta.get("world_size", 1))
        if self.sampler is not None and meta["sampler"]:
            try:
                self.sampler.load_state_dict(meta["sampler"])
            except ValueError as exc:
                raise SkdError(f"--resume {self.out}: {exc}") from None
        if self.rank == 0:
            _truncate_metrics(self.out / "metrics.jsonl", meta["step"])
        barrier()
        log.info("resuming %s at step %d", self.out, meta["step"])
        return {**meta, "histogram": Counter(meta["histogram"])}

    def _load_rank_rng(self, ckpt: Path, step: int, saved_world: int) -> None:
        """Rank r continues its own dropout stream; with another world size the streams cannot match."""
        path = ckpt / f"rng-rank{self.rank}-step{step}.pt"
        if saved_world != self.world:
            log.warning(
                "checkpoint was written by %d ranks, resuming on %d: dropout masks will differ from an "
                "uninterrupted run",
                saved_world,
                self.world,
            )
        if self.rank > 0 and path.exists():
            saved = torch.load(path, weights_only=True)
            torch.set_rng_state(saved["torch_rng"])
            if saved.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda_rng"])
        elif self.rank > 0:
            log.warning("no RNG state of rank %d at step %d: its dropout stream restarts from a seed", self.rank, step)
            torch.manual_seed(int(np.random.SeedSequence([self.cfg.seed, self.rank, saved_world]).generate_state(1)[0]))

    def _finish(self, state: dict, seconds: float, loop_seconds: float) -> dict:
        if self.rank != 0:  # rank 0 evaluates and writes run.json (to --output, shared by all ranks)
            barrier()
            return {**json.loads((self.out / "run.json").read_text()), "rank": self.rank}
        last_step, final = getattr(self, "_last_eval", (None, {}))
        if last_step != state["step"]:  # the loop evaluates at its last step; only a finished resume gets here
            final = evaluate(self.model, self.eval_inputs, self.objective, self.device) if self.eval_inputs else {}
        test = {}
        if self.cfg.test_split:
            test_rows = load_rows(replace(self.cfg.data, split=self.cfg.test_split, limit=None))
            test = evaluate(self.model, self._student_inputs(test_rows), self.objective, self.device)
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        run = {
            "config": self.cfg.to_dict(),
            "dataset_fingerprint": self.rows.fingerprint,
            "teachers": [
                {
                    "name": c.name,
                    "cache_key": c.manifest.cache_key,
                    "path": str(c.path),
                    "num_parameters": c.manifest.teacher.num_parameters,
                    "metric": c.manifest.metric.to_dict() if c.manifest.metric else None,
                }
                for c in self.caches
            ],
            "student_parameters": count_parameters(self.model),
            "steps": state["step"],
            "final": final,
            "test": test,
            "best": state["best"],
            "teacher_histogram": dict(state["histogram"]),
            "sampler": describe(self.sampler) if self.sampler else None,
            "learned_history": state["history"] or None,
            "seconds": seconds,
            "steps_per_second": state["step"] / max(loop_seconds, 1e-9),
            "peak_rss_mib": peak_rss,
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "device": str(self.device),
            "world_size": self.world,
        }
        (self.out / "run.json").write_text(json.dumps(run, indent=2, default=str))
        barrier()
        return run


def _rng_state() -> dict:
    """This process's dropout streams (CPU, and the current CUDA device's, which GPU dropout draws from)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def _to(targets, device):
    if targets is None or device.type == "cpu":
        return targets
    if isinstance(targets, list):
        return [_to(t, device) for t in targets]
    return Targets(**{k: v.to(device, non_blocking=True) if v is not None else None for k, v in vars(targets).items()})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint, so a resumed log reads like an uninterrupted one."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train(cfg: TrainConfig) -> dict:
    """Python API of `skdcache train`: returns the run record also written to OUTPUT/run.json."""
    return Trainer(cfg).train()
