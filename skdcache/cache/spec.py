"""The target spec: what a teacher cache stores (head, lengths, top-k / sampled targets, hidden states).

Part of the cache format (docs/cache-format.md); apart because parsing a stored spec strictly is most of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from skdcache.cache.manifest import damaged, parse_count

HEAD_KINDS = ("sequence", "mlm", "causal")
TARGET_KINDS = ("topk", "sampled", "hybrid")  # token-level targets (docs/token-targets.md)
SAMPLE_FIELDS = ("targets", "samples", "sample_temperature", "sample_seed")
HIDDEN_TOKENS = ("cls", "all")


@dataclass(frozen=True)
class TargetSpec:
    """What a teacher cache stores; part of its content key."""

    head: str  # sequence | mlm | causal
    max_length: int
    top_k: int | None = None  # token-level heads only
    hidden_layers: tuple[int, ...] = ()  # hidden_states indices (0 = embeddings)
    hidden_tokens: str | None = None  # cls | all, when hidden_layers is not empty
    mlm_probability: float | None = None  # mlm only: share of tokens masked
    mask_seed: int | None = None  # mlm only: seed of the deterministic masking
    targets: str = "topk"  # token-level heads: topk | sampled | hybrid
    samples: int | None = None  # sampled / hybrid: teacher draws per position
    sample_temperature: float | None = None  # sampled / hybrid: T of the draws and of the stored log-probs
    sample_seed: int | None = None  # sampled / hybrid: draws are seeded by (sample_seed, row)

    def to_dict(self) -> dict:
        """The spec as hashed into the content key; top-k specs omit the sampling fields, so their keys are
        the ones computed before sampled targets existed."""
        d = asdict(self)
        d["hidden_layers"] = list(self.hidden_layers)
        if self.targets == "topk":
            for name in SAMPLE_FIELDS:
                d.pop(name)
        return d

    @property
    def sampled(self) -> bool:
        return self.targets in ("sampled", "hybrid")

    @classmethod
    def from_dict(cls, d: dict) -> TargetSpec:
        """Parse a manifest's spec, refusing values no writer produces: the student's inputs (masking, length)
        are rebuilt from it, so a wrong value would silently misalign every target."""
        if not isinstance(d, dict):
            raise damaged(f"targets is {type(d).__name__}, not an object")
        layers = d.get("hidden_layers", ())
        if not isinstance(layers, list | tuple):
            raise damaged(f"targets.hidden_layers is {layers!r}, not a list")
        try:
            spec = cls(**{**d, "hidden_layers": tuple(layers)})
        except TypeError as exc:  # unknown or missing keys
            raise damaged(f"targets: {exc}") from None
        spec._check()
        return spec

    def _check(self) -> None:
        def one_of(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise damaged(f"targets.{name} is {getattr(self, name)!r}, not one of {list(allowed)}")

        def number(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not lo < v <= hi):
                raise damaged(f"targets.{name} is {v!r}, not a number in ({lo}, {hi}]")

        one_of("head", HEAD_KINDS)
        one_of("targets", TARGET_KINDS)
        one_of("hidden_tokens", (*HIDDEN_TOKENS, None))
        parse_count(self.max_length, "targets.max_length", 1, 2**20)
        for name in ("top_k", "samples"):
            if getattr(self, name) is not None:
                parse_count(getattr(self, name), f"targets.{name}", 1, 2**24)
        for name in ("mask_seed", "sample_seed"):
            if getattr(self, name) is not None:
                parse_count(getattr(self, name), f"targets.{name}", 0, 2**64 - 1)  # numpy seeds are unsigned
        for i, layer in enumerate(self.hidden_layers):
            parse_count(layer, f"targets.hidden_layers[{i}]", 0, 2**16)
        number("mlm_probability", 0.0, 1.0)
        number("sample_temperature", 0.0, 1e6)
        if self.token_level and self.targets in ("topk", "hybrid") and self.top_k is None:
            raise damaged("targets.top_k is missing for top-k targets")
        if self.token_level and self.sampled and (self.samples is None or self.sample_temperature is None):
            raise damaged("targets.samples or sample_temperature is missing for sampled targets")
        if self.head == "mlm" and (self.mlm_probability is None or self.mask_seed is None):
            raise damaged("targets.mlm_probability or mask_seed is missing for an mlm head")
        if self.token_level and self.sampled and self.sample_seed is None:
            raise damaged("targets.sample_seed is missing for sampled targets")
        if self.hidden_layers and self.hidden_tokens is None:
            raise damaged("targets.hidden_tokens is missing while hidden_layers are stored")

    @property
    def token_level(self) -> bool:
        return self.head in ("mlm", "causal")
