"""The target-kind registry: every place that lists arrays or `Targets` fields derives from it and agrees."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from skdcache.cache import format as fmt
from skdcache.cache import kinds
from skdcache.cache.reader import Targets
from skdcache.cache.spec import TargetSpec

SAMPLED = {"samples": 16, "sample_temperature": 1.0, "sample_seed": 0}
SPECS = {
    "sequence": TargetSpec("sequence", 32),
    "sequence+cls": TargetSpec("sequence", 32, hidden_layers=(6,), hidden_tokens="cls"),
    "causal-topk": TargetSpec("causal", 32, top_k=32),
    "causal-sampled+all": TargetSpec(
        "causal", 32, targets="sampled", hidden_layers=(1, 2), hidden_tokens="all", **SAMPLED
    ),
    "mlm-hybrid+cls": TargetSpec(
        "mlm", 32, top_k=8, targets="hybrid", hidden_layers=(0,), hidden_tokens="cls",
        mlm_probability=0.15, mask_seed=0, **SAMPLED,
    ),
}  # fmt: skip


def test_every_field_is_a_targets_attribute() -> None:
    attributes = {f.name for f in dataclasses.fields(Targets)}
    assert set(kinds.FIELDS) <= attributes
    assert set(kinds.COUNTS_OF.values()) <= attributes


@pytest.mark.parametrize("name", SPECS)
def test_the_layout_holds_exactly_the_arrays_the_kinds_name(name: str) -> None:
    spec = SPECS[name]
    counts = np.full(10, 3)
    layout, index = fmt.plan_layout(spec, 10, 3, 1000, 8, counts, counts + 2, rows_per_block=4)
    assert set(layout.arrays) == kinds.array_names(spec)
    assert set(index) == {n for n in kinds.INDEX_ARRAYS if n in layout.arrays}
    for name, array in layout.arrays.items():
        if name not in kinds.INDEX_ARRAYS:
            field = kinds.FIELDS[name]
            dims = kinds.Dims(3, 1000, 8)
            assert array.shape[1:] == field.shape(spec, dims) and array.dtype == field.dtype(spec, dims), name


def test_arrays_come_in_the_format_order() -> None:
    """An index array before the arrays it indexes, kinds in `KINDS` order: the manifest lists them so."""
    counts = np.full(10, 3)
    spec = SPECS["causal-sampled+all"]
    layout, _ = fmt.plan_layout(spec, 10, None, 1000, 8, counts, counts + 2, rows_per_block=4)
    assert list(layout.arrays) == [
        "token_index", "sample_ids", "sample_counts", "sample_logprobs", "positions", "hidden_index", "hidden",
    ]  # fmt: skip


def test_describe_names_what_is_stored() -> None:
    got = {name: kinds.describe(spec) for name, spec in SPECS.items()}
    assert got == {
        "sequence": "logits",
        "sequence+cls": "logits,hidden[6]/cls",
        "causal-topk": "top32+tail",
        "causal-sampled+all": "sampled16@T1,hidden[1, 2]/all",
        "mlm-hybrid+cls": "top8+sampled16@T1,hidden[0]/cls",
    }


def test_token_ids_need_32_bits_only_above_65536() -> None:
    assert kinds.token_id_dtype(65536) == "uint16" and kinds.token_id_dtype(65537) == "uint32"
