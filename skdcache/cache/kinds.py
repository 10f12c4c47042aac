"""Target kinds: every kind of teacher target a cache stores, described once.

A kind names its fields. Each field is both an array of the cache group and an attribute of `reader.Targets`,
with its per-entry shape and stored dtype. A kind also says when a spec stores it, and which index array (if
any) gives each row's range of entries. The format's tables and layout (`format.py`), the reader, the
block buffer, the live path's copy and the `ls` summary are all derived from `KINDS`. Adding a kind means an
entry here, its reduction (`teacher/reduce.py`), its field on `Targets` and its loss (`distill/`).

Shapes in comments: n = target positions of a batch, k = top_k, N = samples, L = hidden layers, H = width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Spec = Any  # a `spec.TargetSpec` (not imported: the spec's checks come after the kinds in the format)


@dataclass(frozen=True)
class Dims:
    """The teacher sizes that array shapes and dtypes depend on."""

    n_labels: int | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None


def token_id_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


@dataclass(frozen=True)
class Field:
    """One array of a kind: its name, shape per entry (after axis 0) and stored dtype.

    `exact`: integers (ids, counts, positions) that a live teacher hands over as they are. The live path
    rounds every other field to float16, as the cache stores it, so cached and live targets are identical.
    """

    name: str
    shape: Callable[[Spec, Dims], tuple[int, ...]]
    dtype: Callable[[Spec, Dims], str]
    exact: bool = False


@dataclass(frozen=True)
class TargetKind:
    """A kind of target: its fields, when a spec stores it, and how rows find their entries.

    Args:
        index: the index array holding each row's (start, count) of entries, for kinds with one entry per
            token; None for one entry per row.
        per_row: for a kind with an index, whether this spec stores one entry per row anyway. Hidden states of
            the CLS token are one example.
        describe: the kind's part of `skdcache ls`'s target summary. None means no part.
    """

    name: str
    fields: tuple[Field, ...]
    stored: Callable[[Spec], bool]
    index: str | None = None
    per_row: Callable[[Spec], bool] = lambda spec: False
    describe: Callable[[Spec], str] | None = None

    def index_for(self, spec: Spec) -> str | None:
        """The index array of this kind's entries in a cache of `spec` (None: one entry per row)."""
        return None if self.index is None or self.per_row(spec) else self.index


def _f16(spec: Spec, dims: Dims) -> str:
    return "float16"


def _ids(spec: Spec, dims: Dims) -> str:
    return token_id_dtype(dims.vocab_size)


LOGITS = TargetKind(  # sequence heads: [n_rows, n_labels], columns in the dataset's label order
    "logits",
    (Field("logits", lambda s, d: (d.n_labels,), _f16),),
    stored=lambda s: s.head == "sequence",
    describe=lambda s: "logits",
)
TOPK = TargetKind(  # token heads: the top-k log-probs [n, k] (descending), their ids [n, k], log(1 - their mass) [n]
    "topk",
    (
        Field("topk_logprobs", lambda s, d: (s.top_k,), _f16),
        Field("topk_ids", lambda s, d: (s.top_k,), _ids, exact=True),
        Field("tail_logmass", lambda s, d: (), _f16),
    ),
    stored=lambda s: s.token_level and s.targets in ("topk", "hybrid"),
    index="token_index",
    describe=lambda s: f"top{s.top_k}+tail" if s.targets == "topk" else f"top{s.top_k}",
)
SAMPLED = TargetKind(  # token heads: N draws of p_T as distinct ids [n, N], counts [n, N], log p_T [n, N]
    "sampled",
    (
        Field("sample_ids", lambda s, d: (s.samples,), _ids, exact=True),
        Field("sample_counts", lambda s, d: (s.samples,), lambda s, d: "uint8" if s.samples <= 255 else "uint16", True),
        Field("sample_logprobs", lambda s, d: (s.samples,), _f16),
    ),
    stored=lambda s: s.token_level and s.sampled,
    index="token_index",
    describe=lambda s: f"sampled{s.samples}@T{s.sample_temperature:g}",
)
POSITIONS = TargetKind(  # token heads: each target's position in its sequence [n]
    "positions",
    (Field("positions", lambda s, d: (), lambda s, d: "uint16", exact=True),),
    stored=lambda s: s.token_level,
    index="token_index",
)
HIDDEN = TargetKind(  # hidden states [n_rows, L, H] (CLS token) or [n_tokens, L, H] (every token)
    "hidden",
    (Field("hidden", lambda s, d: (len(s.hidden_layers), d.hidden_size), _f16),),
    stored=lambda s: bool(s.hidden_layers),
    index="hidden_index",
    per_row=lambda s: s.hidden_tokens == "cls",
    describe=lambda s: f"hidden{list(s.hidden_layers)}/{s.hidden_tokens}",
)
KINDS = (LOGITS, TOPK, SAMPLED, POSITIONS, HIDDEN)  # the format's array order

FIELDS = {f.name: f for kind in KINDS for f in kind.fields}
INDEX_ARRAYS = ("token_index", "hidden_index")
COUNTS_OF = {"token_index": "token_counts", "hidden_index": "hidden_counts"}  # the `Targets` field of each
INDEX_OF = {f.name: kind.index for kind in KINDS if kind.index for f in kind.fields}  # when stored per token
TOKEN_ARRAYS = tuple(name for name, index in INDEX_OF.items() if index == "token_index")
ARRAY_NAMES = (*FIELDS, *INDEX_ARRAYS)


def stored_kinds(spec: Spec) -> list[TargetKind]:
    return [kind for kind in KINDS if kind.stored(spec)]


def array_names(spec: Spec) -> set[str]:
    """The arrays a cache of `spec` holds (what `format.plan_layout` creates)."""
    names = {f.name for kind in stored_kinds(spec) for f in kind.fields}
    return names | {index for kind in stored_kinds(spec) if (index := kind.index_for(spec))}


def describe(spec: Spec) -> str:
    """What a cache of `spec` stores, in a few characters (`ls`): e.g. ``top32+tail`` or ``logits,hidden[6]/cls``."""
    token = "+".join(k.describe(spec) for k in stored_kinds(spec) if k.describe and k.index == "token_index")
    other = [k.describe(spec) for k in stored_kinds(spec) if k.describe and k.index != "token_index"]
    return ",".join(([token] if token else []) + other)
