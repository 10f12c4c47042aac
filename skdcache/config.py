"""`TrainConfig`: every setting of a training run, saved whole in run.json (the CLI's flags mirror its fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from skdcache.data import DataSpec

MODES = ("skd", "single", "average", "none", "online")


def flag(default: Any, help_text: str) -> Any:
    """A field with its `--help` line, kept next to the setting it explains (cli/options.py reads it)."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Every flag of `skdcache train`; saved whole in run.json."""

    data: DataSpec
    student: str = field(metadata={"help": "Pretrained path/hub id, or a config .json (fresh weights)."})
    output: str = field(metadata={"help": "Run directory."})
    cache: str | None = None
    teachers: list[str] | None = None  # None = every teacher cached for this data
    mode: str = "skd"
    sampling: str = flag(
        "uniform",
        "uniform (safest under a capacity gap) | teacher-rank (the best-validated teacher's quality; "
        "docs/results.md) | student-rank | student-fit | small-to-large | learned | weights=0.2,0.3,0.5",
    )
    sampling_temperature: float = flag(0.05, "Rank samplers: p = softmax(metric / temperature).")
    student_layers: str | None = flag(None, "Keep only these layers: N (first N) or a list like 0,2.")
    student_head: str = "auto"
    # word embeddings are most of a small BERT; freezing them halves CPU step time
    freeze_embeddings: bool = flag(False, "Keep the word embeddings fixed (much faster on CPU).")
    eval_split: str | None = flag("validation", "Labelled split for evaluation.")
    eval_rows: int | None = flag(None, "Evaluate on the first N rows of --eval-split only (faster selection).")
    # report-only: measured at the checkpoint validation selects (run.json "test") and at the last step
    test_split: str | None = flag(None, "Split reported at the validation-selected checkpoint (never selects).")
    epochs: float = 3.0
    max_steps: int | None = flag(None, "Optimizer steps (overrides --epochs).")
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    temperature: float = 2.0
    alpha: float = flag(0.5, "Weight of the KD term vs labels.")
    beta: float = flag(0.0, "Weight of the hidden-state loss.")
    # "s:t,s:t" over hidden_states indices
    layer_map: str | None = flag(None, "Hidden-state map student:teacher, e.g. 2:6,4:12.")
    eval_every: int = flag(0, "Steps between evaluations (0: epoch).")
    max_length: int = 128
    seed: int = 0
    num_workers: int = flag(1, "Loader processes reading targets.")
    device: str = "auto"
    pilot_steps: int | None = flag(None, "student-rank: steps per pilot (default: half the run).")
    # the P5 reference: targets not truncated to the cached top-k
    full_logits: bool = flag(False, "online + MLM/causal: distil from the full live vocabulary, not top-k.")
    teacher_path: list[str] | None = None  # online: NAME=PATH for a teacher whose model moved since precompute
    # in units of the running advantage RMS (see LearnedSampler)
    learned_lr: float = flag(0.1, "learned: logit step per typical advantage.")
    resume: bool = flag(False, "Continue OUTPUT/checkpoint exactly where it stopped.")
    trust_remote_code: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
