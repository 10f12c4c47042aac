"""`TrainConfig`: every setting of a training run, saved whole in run.json (the CLI's flags mirror its fields)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skdcache.data.rows import DataSpec
from skdcache.errors import SkdError
from skdcache.fields import check_ranges, flag
from skdcache.models import check_model_path

MODES = ("skd", "single", "average", "none", "online", "route", "weight")
# how a run is shown or restarted, not what it trains: a rerun that differs only in these reuses the finished run
NOT_SETTINGS = {"progress", "overwrite", "resume", "num_workers"}


@dataclass
class TrainConfig:
    """Every flag of `skdcache train`; saved whole in run.json."""

    data: DataSpec
    student: str = field(metadata={"help": "Pretrained path/hub id, or a config .json (fresh weights)."})
    output: str = field(metadata={"help": "Run directory."})
    cache: str | None = None
    teachers: list[str] | None = None  # None = every teacher cached for this data
    mode: str = flag(
        "skd",
        "skd: one sampled teacher per step | single | average (all teachers) | none (labels only) | online "
        "(live teachers) | route: one teacher per row, from cached per-row scores | weight: every teacher, "
        "per-row CA-MKD weights (or the student-aware closest-correct).",
    )
    sampling: str = flag(
        "uniform",
        "uniform (safest under a capacity gap) | teacher-rank (the best-validated teacher's quality; "
        "docs/results.md) | student-rank | student-fit | small-to-large | learned | weights=0.2,0.3,0.5. "
        "--mode route: min-ce | confidence[=TAU] | ca-mkd | smallest-correct | uniform; --mode weight: ca-mkd | "
        "confidence[=TAU] | uniform | closest-correct (docs/sampling.md).",
    )
    sampling_temperature: float = flag(0.05, "Rank samplers: p = softmax(metric / temperature).", above=0)
    student_layers: str | None = flag(None, "Keep only these layers: N (first N) or a list like 0,2.")
    student_head: str = flag("auto", "Student head; auto: the teachers' head.")
    # word embeddings are most of a small BERT; freezing them halves CPU step time
    freeze_embeddings: bool = flag(False, "Keep the word embeddings fixed (much faster on CPU).")
    eval_split: str | None = flag("validation", "Labelled split for evaluation.")
    eval_rows: int | None = flag(None, "Evaluate on the first N rows of --eval-split only (faster selection).", min=1)
    # report-only: measured at the checkpoint validation selects (run.json "test") and at the last step
    test_split: str | None = flag(None, "Split reported at the validation-selected checkpoint (never selects).")
    epochs: float = flag(3.0, "Passes over the training rows (fractions allowed).", above=0)
    max_steps: int | None = flag(None, "Optimizer steps (overrides --epochs).", min=1)
    batch_size: int = flag(32, "Rows per micro-batch (the global batch under --nproc).", min=1)
    lr: float = flag(1e-4, "Peak learning rate (AdamW, linear warm-up and decay).", above=0)
    weight_decay: float = flag(0.01, "AdamW weight decay.", min=0)
    warmup_ratio: float = flag(0.1, "Fraction of the steps spent warming up the learning rate.", min=0, max=1)
    grad_clip: float = flag(1.0, "Clip the gradient norm to this.", above=0)
    grad_accum: int = flag(1, "Micro-batches per optimizer step (one teacher drawn per step).", min=1)
    temperature: float = flag(
        2.0, "KD softening temperature T (sampled targets: the precompute --sample-temperature).", above=0
    )
    alpha: float = flag(0.5, "Weight of the KD term; 1 - alpha weighs the labels.", min=0, max=1)
    beta: float = flag(0.0, "Weight of the hidden-state loss (needs caches with --hidden-layers).", min=0)
    # "s:t,s:t" over hidden_states indices
    layer_map: str | None = flag(None, "Hidden-state map student:teacher, e.g. 2:6,4:12.")
    eval_every: int = flag(0, "Steps between evaluations (0: once per epoch).", min=0)
    max_length: int = flag(128, "Tokens per row; longer rows are truncated.", min=1)
    seed: int = flag(0, "Seed of the data order, teacher draws and initial weights.", min=0)
    num_workers: int = flag(1, "Loader processes reading targets (0: in the training process).", min=0)
    device: str = flag("auto", "auto, cpu, cuda or cuda:N.")
    pilot_steps: int | None = flag(None, "student-rank: steps per pilot (default: half the run).", min=1)
    # the P5 reference: targets not truncated to the cached top-k
    full_logits: bool = flag(False, "online + MLM/causal: distil from the full live vocabulary, not top-k.")
    teacher_path: list[str] | None = None  # online: NAME=PATH for a teacher whose model moved since precompute
    # in units of the running advantage RMS (see LearnedSampler)
    learned_lr: float = flag(0.1, "learned: logit step per typical advantage.", above=0)
    resume: bool = flag(False, "Continue OUTPUT/checkpoint exactly where it stopped.")
    trust_remote_code: bool = flag(False, "Allow model code from the model repository.")
    overwrite: bool = flag(False, "Replace a finished run in --output (refused otherwise).")
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse a bad setting in one line naming the flag, before anything is loaded or written."""
        if self.mode not in MODES:
            raise SkdError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}")
        rule = self.sampling.partition("=")[0]
        if self.mode in ("skd", "online") and rule in ("min-ce", "confidence", "ca-mkd", "smallest-correct"):
            raise SkdError(f"--sampling {self.sampling} picks a teacher per row: pass --mode route (or --mode weight)")
        if self.mode in ("route", "weight") and self.beta > 0:
            raise SkdError(f"--beta applies to one teacher per step, not --mode {self.mode}; drop --beta or use skd")
        if self.mode in ("route", "weight"):
            from skdcache.sampling.routing import parse_rule  # the rule's own check, before any data is read

            parse_rule(self.sampling, self.mode)
        check_ranges(self)
        check_ranges(self.data, {"source": "--data"})
        check_model_path(self.student, "--student ")
        out = Path(self.output)
        if out.exists() and not out.is_dir():
            raise SkdError(f"--output {out} is a file; pass a folder for the run")
        self.finished_record()

    def finished_record(self) -> dict | None:
        """The run.json in --output when it holds this very run (same settings): a rerun of the same command
        reuses it. Refuses, in one line, a finished run with other settings (unless --overwrite / --resume)."""
        out = Path(self.output)
        if self.overwrite or self.resume or not (out / "run.json").exists():
            return None
        try:
            record = json.loads((out / "run.json").read_text())
            old = {k: v for k, v in record["config"].items() if k not in NOT_SETTINGS}
        except (OSError, ValueError, KeyError, AttributeError):
            old, record = {}, None
        new = {k: v for k, v in json.loads(json.dumps(self.to_dict())).items() if k not in NOT_SETTINGS}
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise SkdError(
                f"--output {out} holds a finished run with other settings ({', '.join(changed)}); pass --overwrite "
                "to replace it, or another --output"
            )
        return record
