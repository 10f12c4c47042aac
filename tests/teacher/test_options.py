"""Precompute options: one-line refusals naming the flag, hidden-layer parsing, the teacher/data checks, and the
TargetSpec each head stores (always one the cache's strict parser accepts)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from skdcache.cache.spec import TargetSpec
from skdcache.data.rows import DataSpec, TextRows
from skdcache.errors import SkdError
from skdcache.teacher.load import TeacherSpec, open_teacher
from skdcache.teacher.options import TargetOptions, check_teacher, parse_hidden_layers, preflight, target_spec


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


def rows(labels: list[str] | None = ("a", "b", "c"), chat: bool = False, task: str = "classification") -> TextRows:
    return TextRows(
        DataSpec("data"),
        ["x", "y"],
        None,
        np.array([0, 1]) if labels else None,
        list(labels) if labels else None,
        task if labels or task == "regression" else "unlabelled",
        messages=[[{"role": "user", "content": "x"}]] * 2 if chat else None,
    )


def config(num_labels: int = 3, vocab_size: int = 100, layers: int = 4):
    return SimpleNamespace(num_labels=num_labels, vocab_size=vocab_size, num_hidden_layers=layers)


# ---- TargetOptions.check ---------------------------------------------------------------------------------------
def test_default_options_pass():
    TargetOptions().check()
    TargetOptions(rows_per_block=1, targets="hybrid", hidden_tokens="all", samples=65535, mlm_probability=0.99).check()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(rows_per_block=96), "--rows-per-block 96 must be a power of two"),
        (dict(rows_per_block=0), "--rows-per-block 0: must be >= 1"),
        (dict(targets="beam"), "--targets 'beam': choose one of topk, sampled, hybrid"),
        (dict(hidden_tokens="mean"), "--hidden-tokens 'mean': choose cls or all"),
        (dict(top_k=0), "--top-k 0: must be >= 1"),
        (dict(samples=65536), "--samples 65536: must be in [1, 65535]"),
        (dict(sample_temperature=0.0), "--sample-temperature 0.0: must be > 0"),
        (dict(mlm_probability=1.0), "--mlm-probability 1.0: must be in (0, 1)"),
        (dict(mlm_probability=float("nan")), "--mlm-probability nan"),
        (dict(max_length=0), "--max-length 0: must be >= 1"),
        (dict(batch_size=0), "--batch-size 0: must be >= 1"),
        (dict(mask_seed=-1), "--mask-seed -1: must be >= 0"),
    ],
)
def test_a_bad_option_is_one_line_naming_its_flag(kw: dict, message: str):
    with pytest.raises(SkdError) as info:
        TargetOptions(**kw).check()
    assert one_line(info.value).startswith(message)


# ---- --hidden-layers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "layers"),
    [
        (None, ()),
        ("", ()),
        ("last", (4,)),
        ("all", (0, 1, 2, 3, 4)),  # the embeddings too
        ("0", (0,)),
        ("4", (4,)),
        ("3,1", (1, 3)),
        ("2,2,-3", (2,)),  # -3 of 0..4 is 2
        ("-1", (4,)),
        ("-5", (0,)),
        (" 1, 3", (1, 3)),
    ],
)
def test_parse_hidden_layers(value: str | None, layers: tuple[int, ...]):
    assert parse_hidden_layers(value, 4) == layers


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("5", "the teacher has hidden states 0..4"),
        ("-6", "the teacher has hidden states 0..4"),
        ("1,9", "the teacher has hidden states 0..4"),
        ("first", "use last, all, or a comma list like 2,4,6"),
        ("1;2", "use last, all, or a comma list"),
        ("1,", "use last, all, or a comma list"),
    ],
)
def test_bad_hidden_layers_are_refused(value: str, why: str):
    with pytest.raises(SkdError, match=why) as info:
        parse_hidden_layers(value, 4)
    assert f"--hidden-layers {value!r}" in one_line(info.value)


# ---- the teacher against the data ------------------------------------------------------------------------------
def test_check_teacher_accepts_a_matching_teacher():
    spec, opts = TeacherSpec("t", "p"), TargetOptions(top_k=100)
    check_teacher(spec, config(num_labels=3), "sequence", rows(), opts)
    check_teacher(spec, config(num_labels=7), "sequence", rows(labels=None), opts)  # unlabelled: any head size
    check_teacher(spec, config(vocab_size=100), "causal", rows(labels=None, chat=True), opts)  # top_k == vocab
    check_teacher(spec, config(vocab_size=10), "mlm", rows(labels=None), TargetOptions(top_k=500, targets="sampled"))


def test_a_label_count_mismatch_names_both_and_the_fix():
    with pytest.raises(SkdError) as info:
        check_teacher(TeacherSpec("big", "p"), config(num_labels=2), "sequence", rows(), TargetOptions())
    msg = one_line(info.value)
    assert "teacher big has 2 labels, the data has 3 (['a', 'b', 'c'])" in msg and "--label-column" in msg
    regression = rows(labels=None, task="regression")
    regression.labels = np.array([0.5, 1.5], dtype=np.float32)
    with pytest.raises(SkdError, match=r"the data has 1 \(regression\)"):
        check_teacher(TeacherSpec("t", "p"), config(num_labels=3), "sequence", regression, TargetOptions())


@pytest.mark.parametrize("head", ["sequence", "mlm"])
def test_chat_data_needs_a_causal_teacher(head: str):
    chat = rows(labels=None, chat=True)
    with pytest.raises(SkdError, match=f"chat data .* is for causal LMs; teacher t is a {head} model"):
        check_teacher(TeacherSpec("t", "p"), config(), head, chat, TargetOptions())


@pytest.mark.parametrize("targets", ["topk", "hybrid"])
def test_top_k_beyond_the_vocabulary_is_refused(targets: str):
    with pytest.raises(SkdError) as info:
        check_teacher(
            TeacherSpec("t", "p"), config(vocab_size=50), "causal", rows(None), TargetOptions(top_k=51, targets=targets)
        )
    assert one_line(info.value) == "--top-k 51 exceeds teacher t's vocabulary (50)"


# ---- the TargetSpec of each head ---------------------------------------------------------------------------------
def test_sequence_spec_keeps_only_what_it_stores():
    opts = TargetOptions(max_length=64, top_k=5, targets="sampled", hidden_tokens="all", mask_seed=3)
    spec = target_spec("sequence", config(), opts)
    assert spec == TargetSpec("sequence", 64)  # no top-k, sampling, masking or hidden fields
    spec = target_spec("sequence", config(), TargetOptions(hidden_layers="last", hidden_tokens="all"))
    assert spec.hidden_layers == (4,) and spec.hidden_tokens == "all"


def test_token_level_specs():
    mlm = target_spec("mlm", config(), TargetOptions(top_k=8, mlm_probability=0.2, mask_seed=5, samples=3))
    assert mlm == TargetSpec("mlm", 128, top_k=8, mlm_probability=0.2, mask_seed=5)
    sampled = TargetOptions(targets="sampled", samples=12, sample_temperature=3, sample_seed=9, top_k=8)
    causal = target_spec("causal", config(), sampled)
    assert causal.top_k is None and (causal.samples, causal.sample_temperature, causal.sample_seed) == (12, 3.0, 9)
    assert isinstance(causal.sample_temperature, float) and causal.mlm_probability is None
    hybrid = target_spec("causal", config(), TargetOptions(targets="hybrid", top_k=4, samples=6))
    assert (hybrid.top_k, hybrid.samples, hybrid.targets) == (4, 6, "hybrid")


@pytest.mark.parametrize("head", ["sequence", "mlm", "causal"])
@pytest.mark.parametrize("targets", ["topk", "sampled", "hybrid"])
@pytest.mark.parametrize("hidden", [None, "all"])
def test_every_spec_written_is_one_the_cache_reads_back(head: str, targets: str, hidden: str | None):
    spec = target_spec(head, config(), TargetOptions(targets=targets, hidden_layers=hidden, hidden_tokens="cls"))
    assert TargetSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(targets="beam"), "--targets 'beam': choose one of"),
        (dict(targets="sampled", samples=0), "--samples 0: draw between 1 and 65535"),
        (dict(targets="hybrid", samples=70000), "--samples 70000: draw between 1 and 65535"),
        (dict(targets="sampled", sample_temperature=0.0), "--sample-temperature 0.0: must be > 0"),
        (dict(targets="sampled", sample_temperature=float("nan")), "--sample-temperature nan: must be > 0"),
        (dict(hidden_layers="9"), "--hidden-layers '9'"),
    ],
)
def test_target_spec_refuses_what_check_would(kw: dict, message: str):
    """target_spec guards callers that skip TargetOptions.check (the Python API's preflight)."""
    with pytest.raises(SkdError) as info:
        target_spec("causal", config(), TargetOptions(**kw))
    assert one_line(info.value).startswith(message)


def test_sequence_teachers_ignore_sampling_options():
    assert target_spec("sequence", config(), TargetOptions(targets="sampled", samples=0)).targets == "topk"


# ---- preflight: the teacher's config alone --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_config_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig

    d = tmp_path_factory.mktemp("teacher")
    BertConfig(vocab_size=60, num_labels=3, architectures=["BertForSequenceClassification"]).save_pretrained(d)
    return d


def test_preflight_passes_a_matching_teacher(bert_config_dir: Path):
    preflight(open_teacher(TeacherSpec("t", str(bert_config_dir))), rows(), TargetOptions())


def test_preflight_refuses_before_any_weights_exist(bert_config_dir: Path, tmp_path: Path):
    """Only config.json exists: every refusal here comes from the config, before a model could be loaded."""
    assert [p.name for p in bert_config_dir.iterdir()] == ["config.json"]
    with pytest.raises(SkdError, match="teacher t has 3 labels, the data has 2"):
        preflight(open_teacher(TeacherSpec("t", str(bert_config_dir))), rows(labels=["a", "b"]), TargetOptions())
    with pytest.raises(SkdError, match="--top-k 61 exceeds teacher t's vocabulary"):
        preflight(open_teacher(TeacherSpec("t", str(bert_config_dir), head="mlm")), rows(None), TargetOptions(top_k=61))
    with pytest.raises(SkdError, match="model path ./nowhere/t does not exist"):
        preflight(open_teacher(TeacherSpec("t", "./nowhere/t")), rows(), TargetOptions())
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(SkdError, match="cannot read the config of t"):
        preflight(open_teacher(TeacherSpec("t", str(bare))), rows(), TargetOptions())
