"""Chat rows for causal LMs: the assistant mask, the cached positions, cache == online, SkdTrainer == train, and
the chat template in the fingerprint."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, make_model, no_dropout, spread
from test_integration_hf import cfg_for, step_lines, trainer_for

from skdcache import DataSpec, SkdError, TargetOptions, TeacherCache, TeacherSpec, precompute
from skdcache.data.chat import render_chat
from skdcache.data.rows import load_rows, tokenize
from skdcache.train import train

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH = 64
TEMPLATE = "{% for m in messages %}[CLS] {{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
# the same text, with the assistant content marked for `return_assistant_tokens_mask`
GENERATION_TEMPLATE = (
    "{% for m in messages %}[CLS] {{ m['role'] }} {% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] }} [SEP]{% endgeneration %}{% else %}{{ m['content'] }} [SEP]{% endif %} {% endfor %}"
)
OTHER_TEMPLATE = "{% for m in messages %}{{ m['role'] }} said {{ m['content'] }} [SEP] {% endfor %}"


def conversations(n: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)

    def words() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))

    chats = []
    for _ in range(n):
        chat = [{"role": "system", "content": words()}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 2)):
            chat += [{"role": "user", "content": words()}, {"role": "assistant", "content": words()}]
        chats.append(chat)
    return chats


def with_template(directory: Path, template: str) -> Path:
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    tok.chat_template = template
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("chat-data")
    with open(d / "train.jsonl", "w") as f:
        for chat in conversations(48, seed=1):
            f.write(json.dumps({"messages": chat}) + "\n")
    return d


@pytest.fixture(scope="module")
def chat_team(tmp_path_factory, chat_data):
    """One causal teacher cached for the chat rows, and a dropout-free student with the same template."""
    root = tmp_path_factory.mktemp("chat")
    spec = DataSpec(str(chat_data), label_column=None, messages_column="messages")
    teacher = with_template(spread(make_model(root / "t", "causal", layers=2, seed=1), 3.0), TEMPLATE)
    opts = TargetOptions(max_length=MAX_LENGTH, top_k=8, batch_size=16, rows_per_block=16, progress=False)
    (result,) = precompute(spec, [TeacherSpec("t", str(teacher))], root / "cache", opts)
    student = with_template(no_dropout(make_model(root / "student", "causal", layers=1, seed=9)), TEMPLATE)
    return spec, root / "cache", student, result.path


def run_cfg(spec: DataSpec, student: Path, cache: Path, out: Path, **kw):
    """`test_integration_hf`'s run settings at this module's length: 4 steps of 8 rows."""
    return dataclasses.replace(
        cfg_for(spec, student, cache, out), max_length=MAX_LENGTH, max_steps=4, batch_size=8, **kw
    )


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


def test_mask_is_exactly_the_assistant_content_and_end_of_turn_tokens(chat_team):
    """Both ways of finding assistant turns (incremental rendering, {% generation %}) mark exactly the tokens of
    the assistant contents, tokenised on their own, and the [SEP] closing each; the rendered text is the
    template's, written out by hand."""
    spec, _, student, _ = chat_team
    tok = transformers.AutoTokenizer.from_pretrained(student)
    raw = load_rows(spec)
    masks = []
    for template in (TEMPLATE, GENERATION_TEMPLATE):
        rows = render_chat(raw, tok, template)
        enc = tokenize(tok, rows, MAX_LENGTH)
        masks.append(enc.assistant)
        for chat, text, ids, mask in zip(raw.messages, rows.texts, enc.ids, enc.assistant, strict=True):
            assert text == "".join(f"[CLS] {m['role']} {m['content']} [SEP] " for m in chat)
            expected = [
                t
                for m in chat
                if m["role"] == "assistant"
                for t in [*tok(m["content"], add_special_tokens=False)["input_ids"], tok.sep_token_id]
            ]
            assert [i for i, keep in zip(ids, mask, strict=True) if keep] == expected
            assert ids[0] == tok.cls_token_id  # the template's specials only: none added by the tokenizer
    for a, b in zip(*masks, strict=True):
        assert (a == b).all()


def test_precompute_caches_targets_only_at_positions_predicting_assistant_tokens(chat_team):
    spec, _, student, path = chat_team
    tok = transformers.AutoTokenizer.from_pretrained(student)
    rows = render_chat(load_rows(spec), tok)
    enc = tokenize(tok, rows, MAX_LENGTH)
    cache = TeacherCache(path)
    assert cache.manifest.dataset.chat_template == TEMPLATE
    assert cache.dataset_fingerprint == rows.fingerprint
    targets = cache.read(np.arange(len(rows)))
    expected = [np.flatnonzero(m[1:]) for m in enc.assistant]
    assert targets.token_counts.tolist() == [len(p) for p in expected]
    assert targets.positions.tolist() == np.concatenate(expected).tolist()
    assert sum(len(p) for p in expected) < sum(len(x) for x in enc.ids) // 2  # prompts really are left out


def test_single_from_cache_equals_online_on_chat_rows(chat_team, tmp_path: Path):
    """Same positions, targets and label tokens live and cached: the same losses step for step."""
    spec, cache, student, _ = chat_team
    config = run_cfg(spec, student, cache, tmp_path / "single", mode="single")
    train(config)
    train(dataclasses.replace(config, output=str(tmp_path / "online"), mode="online"))
    a, b = step_lines(tmp_path / "single"), step_lines(tmp_path / "online")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)
    assert min(x["kd"] for x in a) > 1e-2


def test_label_loss_sits_on_assistant_tokens_only(chat_team):
    from skdcache.training.loader import student_batch
    from skdcache.training.student import student_inputs

    spec, _, student, _ = chat_team
    tok = transformers.AutoTokenizer.from_pretrained(student)
    rows = render_chat(load_rows(spec), tok)
    batch = student_batch(student_inputs(tok, rows, "causal", MAX_LENGTH, []), np.arange(4))
    for i in range(4):
        labelled = (batch["token_labels"][i] != -100).nonzero().flatten()
        assert labelled.tolist() == batch["target_mask"][i].nonzero().flatten().tolist()
        ids = batch["input_ids"][i]
        assert batch["token_labels"][i, labelled].tolist() == ids[labelled + 1].tolist()


def test_skdtrainer_loss_equals_train_on_chat_rows(chat_team, tmp_path: Path):
    spec, cache, student, _ = chat_team
    config = run_cfg(spec, student, cache, tmp_path / "native")
    train(config)
    native = step_lines(tmp_path / "native")
    dataset = datasets.load_dataset("json", data_files=str(Path(spec.source) / "train.jsonl"), split="train")
    trainer = trainer_for(config, "causal", tmp_path / "hf", dataset=dataset)
    assert trainer.model.get_output_embeddings()._forward_hooks  # float32 vocabulary projection under autocast
    trainer.train()
    hf = trainer.skd_history
    assert [x["step"] for x in hf] == [x["step"] for x in native] == [1, 2, 3, 4]
    for x, y in zip(hf, native, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["kd"] == pytest.approx(y["kd"], abs=1e-5)


def test_the_template_is_in_the_fingerprint_and_a_mismatch_is_refused(chat_team, tmp_path: Path):
    spec, cache, student, _ = chat_team
    tok = transformers.AutoTokenizer.from_pretrained(student)
    raw = load_rows(spec)
    assert render_chat(raw, tok, OTHER_TEMPLATE).fingerprint != render_chat(raw, tok, TEMPLATE).fingerprint
    other = tmp_path / "other.jinja"
    other.write_text(OTHER_TEMPLATE)
    config = run_cfg(dataclasses.replace(spec, chat_template=str(other)), student, cache, tmp_path / "x")
    with pytest.raises(SkdError) as err:
        train(config)
    assert "another chat template" in one_line(err.value)
    dataset = datasets.load_dataset("json", data_files=str(Path(spec.source) / "train.jsonl"), split="train")
    with pytest.raises(SkdError) as err:
        trainer_for(
            run_cfg(spec, student, cache, tmp_path / "y"),
            "causal",
            tmp_path / "hf",
            dataset=dataset,
            chat_template=OTHER_TEMPLATE,
        )
    assert "another chat template" in one_line(err.value)


def test_another_end_of_turn_rule_is_refused_in_one_line(chat_team, tmp_path: Path):
    """The rule is part of the rows: a cache whose end-of-turn tokens carry loss is not read without them."""
    spec, cache, student, _ = chat_team
    config = run_cfg(dataclasses.replace(spec, end_of_turn=False), student, cache, tmp_path / "x")
    with pytest.raises(SkdError) as err:
        train(config)
    assert "--end-of-turn" in one_line(err.value)
    assert TeacherCache(chat_team[3]).manifest.dataset.end_of_turn is True


def test_a_tokenizer_without_template_names_the_flag(chat_data, tmp_path: Path):
    bare = make_model(tmp_path / "bare", "causal", layers=1)
    spec = DataSpec(str(chat_data), label_column=None, messages_column="messages")
    with pytest.raises(SkdError) as err:
        precompute(spec, [TeacherSpec("t", str(bare))], tmp_path / "cache", TargetOptions(progress=False))
    assert "--chat-template" in one_line(err.value)


def test_messages_as_json_text_in_a_csv_column(tmp_path: Path):
    import csv

    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        for chat in conversations(3, seed=2):
            w.writerow([json.dumps(chat)])
        w.writerow(["not json"])
    spec = DataSpec(str(tmp_path), label_column=None, messages_column="messages", limit=3)
    assert load_rows(spec).messages == conversations(3, seed=2)
    with pytest.raises(SkdError) as err:
        load_rows(dataclasses.replace(spec, limit=None))
    assert "row 3" in one_line(err.value)


def test_chat_example_runs_offline(tmp_path: Path):
    """examples/trainer_chat_kd.py on the bundled tweets: a tiny Llama teacher, its first layer as the student."""
    import subprocess
    import sys

    teacher = with_template(spread(make_model(tmp_path / "t", "causal", layers=2, seed=1), 3.0), TEMPLATE)
    example = Path(__file__).resolve().parents[1] / "examples" / "trainer_chat_kd.py"
    cmd = [sys.executable, str(example), "--teacher", f"t={teacher}", "--output", str(tmp_path / "out")]
    cmd += ["--rows", "16", "--max-steps", "2", "--batch-size", "8", "--max-length", "256", "--student-layers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # ~20 s of CPU; the rest is waiting
    assert done.returncode == 0, done.stderr[-2000:]
    chats = [json.loads(x)["messages"] for x in (tmp_path / "out" / "data" / "train.jsonl").read_text().splitlines()]
    assert len(chats) == 16 and chats[0][1]["role"] == "assistant"
    steps = [line.split() for line in done.stdout.splitlines() if line.startswith("step")]
    assert [int(s[1]) for s in steps] == [1, 2] and all(s[3] == "t" and float(s[5]) > 0 for s in steps)
    config = json.loads((tmp_path / "out" / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
