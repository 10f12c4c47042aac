"""The target spec: its content-key dict, the strict parse of a stored spec (a wrong value would misalign every
target), and the arrays each spec stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skdcache.cache import format as fmt
from skdcache.cache import kinds
from skdcache.cache.spec import SAMPLE_FIELDS, TargetSpec
from skdcache.errors import CacheError

SAMPLED = dict(samples=6, sample_temperature=2.0, sample_seed=3)
VALID = {
    "sequence": TargetSpec("sequence", 128),
    "sequence_hidden_cls": TargetSpec("sequence", 64, hidden_layers=(0, 2), hidden_tokens="cls"),
    "sequence_hidden_all": TargetSpec("sequence", 64, hidden_layers=(1,), hidden_tokens="all"),
    "mlm": TargetSpec("mlm", 32, top_k=8, mlm_probability=0.15, mask_seed=0),
    "causal_topk": TargetSpec("causal", 32, top_k=8),
    "causal_sampled": TargetSpec("causal", 32, targets="sampled", **SAMPLED),
    "causal_hybrid": TargetSpec("causal", 32, top_k=4, targets="hybrid", **SAMPLED),
    "causal_hybrid_hidden": TargetSpec(
        "causal", 32, top_k=4, targets="hybrid", hidden_layers=(2,), hidden_tokens="all", **SAMPLED
    ),
}


@pytest.mark.parametrize("name", VALID)
def test_stored_specs_round_trip_through_json(name: str):
    spec = VALID[name]
    d = json.loads(json.dumps(spec.to_dict()))
    assert TargetSpec.from_dict(d) == spec
    assert isinstance(d["hidden_layers"], list)


def test_topk_specs_hash_without_the_sampling_fields():
    """Top-k specs keep the dict (hence the content keys) of caches made before sampled targets existed."""
    d = VALID["causal_topk"].to_dict()
    assert not set(SAMPLE_FIELDS) & set(d)
    assert d == {
        "head": "causal",
        "max_length": 32,
        "top_k": 8,
        "hidden_layers": [],
        "hidden_tokens": None,
        "mlm_probability": None,
        "mask_seed": None,
    }
    assert TargetSpec.from_dict(d) == VALID["causal_topk"]  # the missing fields take their defaults
    sampled = VALID["causal_sampled"].to_dict()
    assert {k: sampled[k] for k in SAMPLE_FIELDS} == {"targets": "sampled", **SAMPLED}


def test_sampled_and_token_level():
    assert [n for n, s in VALID.items() if s.sampled] == ["causal_sampled", "causal_hybrid", "causal_hybrid_hidden"]
    assert {n for n, s in VALID.items() if s.token_level} == {n for n in VALID if not n.startswith("sequence")}


def bad(**changes) -> dict:
    return {**VALID["causal_hybrid"].to_dict(), **changes}


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ([1, 2], "targets is list, not an object"),
        (bad(hidden_layers="0,1"), "hidden_layers is '0,1', not a list"),
        (bad(extra=1), "targets: "),
        ({"max_length": 32}, "targets: "),  # no head
        (bad(head="decoder"), "targets.head is 'decoder'"),
        (bad(targets="beam"), "targets.targets is 'beam'"),
        (bad(hidden_layers=[1], hidden_tokens="mean"), "targets.hidden_tokens is 'mean'"),
        (bad(max_length=0), "targets.max_length is 0"),
        (bad(max_length=True), "targets.max_length is True"),
        (bad(max_length=32.0), "targets.max_length is 32.0"),
        (bad(max_length=2**20 + 1), "targets.max_length"),
        (bad(top_k=0), "targets.top_k is 0"),
        (bad(samples=-1), "targets.samples is -1"),
        (bad(sample_seed=-1), "targets.sample_seed is -1"),
        (bad(sample_seed=2**64), "targets.sample_seed"),
        (bad(hidden_layers=[1, -1], hidden_tokens="cls"), r"targets.hidden_layers\[1\] is -1"),
        (bad(sample_temperature=0.0), "targets.sample_temperature is 0.0"),
        (bad(sample_temperature=float("nan")), "targets.sample_temperature is nan"),
        (bad(sample_temperature="2"), "targets.sample_temperature is '2'"),
        (bad(top_k=None), "top_k is missing"),
        (bad(samples=None), "samples or sample_temperature is missing"),
        (bad(sample_temperature=None), "samples or sample_temperature is missing"),
        (bad(sample_seed=None), "sample_seed is missing"),
        (bad(hidden_layers=[1]), "hidden_tokens is missing"),
        (dict(VALID["mlm"].to_dict(), mask_seed=None), "mlm_probability or mask_seed is missing"),
        (dict(VALID["mlm"].to_dict(), mlm_probability=0.0), "mlm_probability is 0.0"),
        (dict(VALID["mlm"].to_dict(), mlm_probability=1.5), "mlm_probability is 1.5"),
        (dict(VALID["mlm"].to_dict(), mlm_probability=True), "mlm_probability is True"),
    ],
)
def test_a_stored_spec_no_writer_produces_is_refused(d, match: str):
    with pytest.raises(CacheError, match=match) as info:
        TargetSpec.from_dict(d)
    msg = str(info.value)
    assert "\n" not in msg and "skdcache verify" in msg  # one line, naming the fix


def test_boundary_values_are_accepted():
    d = bad(max_length=2**20, top_k=2**24, sample_seed=2**64 - 1, hidden_layers=[0, 2**16], hidden_tokens="cls")
    assert TargetSpec.from_dict(d).sample_seed == 2**64 - 1
    assert TargetSpec.from_dict(dict(VALID["mlm"].to_dict(), mlm_probability=1.0)).mlm_probability == 1.0
    assert TargetSpec.from_dict(bad(sample_temperature=1)).sample_temperature == 1  # an int temperature


def test_a_sequence_spec_needs_no_token_fields():
    spec = TargetSpec.from_dict({"head": "sequence", "max_length": 8, "top_k": None})
    assert spec == TargetSpec("sequence", 8) and not spec.sampled and not spec.token_level


def test_array_names():
    names = {n: kinds.array_names(s) for n, s in VALID.items()}
    assert names["sequence"] == {"logits"}
    assert names["sequence_hidden_cls"] == {"logits", "hidden"}
    assert names["sequence_hidden_all"] == {"logits", "hidden", "hidden_index"}
    topk = {"token_index", "positions", "topk_logprobs", "topk_ids", "tail_logmass"}
    sampled = {"token_index", "positions", "sample_ids", "sample_counts", "sample_logprobs"}
    assert names["mlm"] == names["causal_topk"] == topk
    assert names["causal_sampled"] == sampled
    assert names["causal_hybrid"] == topk | sampled
    assert names["causal_hybrid_hidden"] == topk | sampled | {"hidden", "hidden_index"}


@pytest.mark.parametrize("name", VALID)
def test_array_names_are_the_arrays_plan_layout_creates(name: str):
    spec = VALID[name]
    counts, lengths = np.full(10, 3), np.full(10, 5)
    layout, _ = fmt.plan_layout(spec, 10, 3, 500, 16, counts, lengths, rows_per_block=4)
    assert set(layout.arrays) == kinds.array_names(spec)
