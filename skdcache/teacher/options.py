"""What precompute stores and how it runs: `TargetOptions` (the flags), turned into a cache's `TargetSpec`."""

from __future__ import annotations

from dataclasses import dataclass

from skdcache.cache import format as fmt
from skdcache.cache.spec import TARGET_KINDS, TargetSpec
from skdcache.data.rows import TextRows
from skdcache.errors import SkdError
from skdcache.fields import check_ranges, flag
from skdcache.teacher.load import TeacherFiles, TeacherSpec


@dataclass
class TargetOptions:
    """What to store and how to run (the precompute flags that are not data or team)."""

    max_length: int = flag(128, "Tokens per row; longer rows are truncated.", min=1)
    top_k: int = flag(32, "Token-level heads: top-k log-probs kept per position (topk, hybrid).", min=1)
    targets: str = "topk"  # token-level heads: topk | sampled | hybrid (docs/token-targets.md)
    samples: int = flag(32, "sampled/hybrid: teacher draws per position.", min=1, max=65535)
    sample_temperature: float = flag(2.0, "sampled/hybrid: T of the draws; train with the same --temperature.", above=0)
    sample_seed: int = flag(0, "sampled/hybrid: seed of the draws.", min=0)
    hidden_layers: str | None = None  # "last" | "all" | "1,3,6" | None
    hidden_tokens: str = "cls"
    mlm_probability: float = flag(0.15, "MLM teachers: fraction of tokens masked.", above=0, below=1)
    mask_seed: int = flag(0, "MLM teachers: seed of the masks.", min=0)
    batch_size: int = flag(64, "Rows per teacher forward pass.", min=1)
    device: str = "auto"
    rows_per_block: int = flag(fmt.ROWS_PER_BLOCK, "Rows per shard (a power of two).", min=1)
    eval_split: str | None = "validation"
    trust_remote_code: bool = False
    progress: bool = True
    repair: bool = False  # re-verify complete caches and recompute only their damaged blocks

    def check(self) -> None:
        """Refuse a bad option in one line naming the flag, before any model is loaded or anything written."""
        check_ranges(self)
        rpb = self.rows_per_block
        if rpb & (rpb - 1):
            raise SkdError(f"--rows-per-block {rpb} must be a power of two (e.g. 1024)")
        if self.targets not in TARGET_KINDS:
            raise SkdError(f"--targets {self.targets!r}: choose one of {', '.join(TARGET_KINDS)}")
        if self.hidden_tokens not in ("cls", "all"):
            raise SkdError(f"--hidden-tokens {self.hidden_tokens!r}: choose cls or all")


def parse_hidden_layers(value: str | None, n_layers: int) -> tuple[int, ...]:
    """`last` -> (n,), `all` -> (0..n) including embeddings, `1,3,-1` -> explicit hidden_states indices."""
    if not value:
        return ()
    if value == "last":
        return (n_layers,)
    if value == "all":
        return tuple(range(n_layers + 1))
    try:
        layers = [int(x) for x in value.split(",")]
    except ValueError:
        raise SkdError(f"--hidden-layers {value!r}: use last, all, or a comma list like 2,4,6") from None
    resolved = tuple(sorted({x % (n_layers + 1) for x in layers}))
    if any(x > n_layers or x < -(n_layers + 1) for x in layers):
        raise SkdError(f"--hidden-layers {value!r}: the teacher has hidden states 0..{n_layers}")
    return resolved


def check_teacher(spec: TeacherSpec, config, head: str, rows: TextRows, opts: TargetOptions) -> None:
    if head == "sequence" and rows.num_labels is not None and config.num_labels != rows.num_labels:
        raise SkdError(
            f"teacher {spec.name} has {config.num_labels} labels, the data has {rows.num_labels} "
            f"({rows.label_names or 'regression'}); fine-tune a teacher for this label set or fix --label-column"
        )
    if rows.messages is not None and head != "causal":
        raise SkdError(f"chat data (--messages-column) is for causal LMs; teacher {spec.name} is a {head} model")
    if head != "sequence" and opts.targets != "sampled" and opts.top_k > config.vocab_size:
        raise SkdError(f"--top-k {opts.top_k} exceeds teacher {spec.name}'s vocabulary ({config.vocab_size})")


def target_spec(head: str, config, opts: TargetOptions) -> TargetSpec:
    """The cache's TargetSpec (part of its content key): only what this head stores."""
    layers = parse_hidden_layers(opts.hidden_layers, config.num_hidden_layers)
    token = head != "sequence"
    kind = opts.targets if token else "topk"
    if kind not in TARGET_KINDS:
        raise SkdError(f"--targets {opts.targets!r}: choose one of {', '.join(TARGET_KINDS)}")
    sampled = kind != "topk"
    if sampled and not 0 < opts.samples <= 65535:
        raise SkdError(f"--samples {opts.samples}: draw between 1 and 65535 tokens per position")
    if sampled and not opts.sample_temperature > 0:
        raise SkdError(f"--sample-temperature {opts.sample_temperature}: must be > 0")
    return TargetSpec(
        head=head,
        max_length=opts.max_length,
        top_k=opts.top_k if token and kind != "sampled" else None,
        hidden_layers=layers,
        hidden_tokens=opts.hidden_tokens if layers else None,
        mlm_probability=opts.mlm_probability if head == "mlm" else None,
        mask_seed=opts.mask_seed if head == "mlm" else None,
        targets=kind,
        samples=opts.samples if sampled else None,
        sample_temperature=float(opts.sample_temperature) if sampled else None,
        sample_seed=opts.sample_seed if sampled else None,
    )


def preflight(teacher: TeacherFiles, rows: TextRows, opts: TargetOptions) -> None:
    """The checks precompute makes with the teacher's config alone: a label or vocabulary mismatch or a bad
    option fails in one line before the cache root exists."""
    check_teacher(teacher.spec, teacher.config, teacher.head, rows, opts)
    target_spec(teacher.head, teacher.config, opts)
