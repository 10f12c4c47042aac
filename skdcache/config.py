"""`TrainConfig`: every setting of a training run, saved whole in run.json (the CLI's flags mirror its fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from skdcache.data import DataSpec

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
    teacher_path: list[str] | None = None  # online: NAME=PATH for a teacher whose model moved since precompute
    learned_lr: float = 0.1  # in units of the running advantage RMS (see LearnedSampler)
    resume: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
