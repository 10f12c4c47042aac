"""Assistant spans and loss positions against an independent reference: random conversations whose contents
are drawn from header words, single letters and punctuation, rendered by several chat templates and, for each,
by a renderer that builds the same text by string concatenation and so knows the spans exactly."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tokenizer

from skdcache import DataSpec, SkdError
from skdcache.data.chat import assistant_spans, render_chat
from skdcache.data.rows import TextRows, fingerprint_rows, tokenize

transformers = pytest.importorskip("transformers")

MARKERS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "</s>",
]
# what a content may hold: the words of the headers, single letters, punctuation, markers, whitespace
PIECES = [
    "a",
    "s",
    "i",
    "is",
    "m",
    "assistant",
    "user",
    "system",
    "im",
    "start",
    "im_start",
    "header",
    "end_header_id",
    "eot_id",
    "|",
    "<",
    ">",
    "!",
    ".",
    "?",
    "\n",
    " ",
    "good movie",
    "said",
    "[SEP]",
    "<|im_end|>",
    "</s>",
]

# (template, the reference: role, content -> (header, content as written, end of turn, after the end of turn))
Piece = Callable[[str, str], tuple[str, str, str, str]]
TEMPLATES: dict[str, tuple[str | None, Piece]] = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
        lambda role, c: (f"<|im_start|>{role}\n", c, "<|im_end|>", "\n"),
    ),
    "llama3": (
        "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}",
        lambda role, c: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", c.strip(), "<|eot_id|>", ""),
    ),
    "zephyr": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '</s>\n' }}{% endfor %}",
        lambda role, c: (f"<|{role}|>\n", c, "</s>", "\n"),
    ),
    "generation": (  # ChatML with the assistant content and its end of turn marked for the tokenizer
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}"
        "{{ '\\n' }}{% endfor %}",
        lambda role, c: (f"<|im_start|>{role}\n", c, "<|im_end|>", "\n"),
    ),
    "tokenizer's own": (  # the suite's template, set on the tokenizer: [CLS] role content [SEP]
        None,
        lambda role, c: (f"[CLS] {role} ", c, " [SEP]", " "),
    ),
}
OWN = "{% for m in messages %}[CLS] {{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
MAX_LENGTH = 4096


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"))
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok.chat_template = OWN
    return tok


def content(rng: random.Random) -> str:
    parts = [rng.choice(PIECES) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return rng.choice(["", " "]).join(parts)


def conversation(rng: random.Random) -> list[dict]:
    chat = [{"role": "system", "content": content(rng)}] if rng.random() < 0.3 else []
    repeated = content(rng)
    for _ in range(rng.randint(1, 3)):
        answer = repeated if rng.random() < 0.3 else content(rng)  # repeated turns: the same answer twice
        chat += [{"role": "user", "content": content(rng)}, {"role": "assistant", "content": answer}]
    return chat


def reference(piece: Piece, chat: list[dict], end_of_turn: bool) -> tuple[str, list[tuple[int, int]]]:
    """The text by concatenation, and each assistant turn's span: its content, and its end of turn if asked."""
    text = "<|begin_of_text|>" if piece is TEMPLATES["llama3"][1] else ""
    spans = []
    for m in chat:
        header, written, eot, after = piece(m["role"], m["content"])
        start = len(text) + len(header)
        end = start + len(written) + (len(eot) if end_of_turn else 0)
        if m["role"] == "assistant" and end > start:
            spans.append((start, end))
        text += header + written + eot + after
    return text, spans


def loss_positions(tok, text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Position t carries a loss exactly when token t + 1 has a character inside an assistant span."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [any(lo < hi and s < hi and e > lo for lo, hi in spans) for s, e in enc["offset_mapping"]]
    return [t for t in range(len(inside) - 1) if inside[t + 1]]


CASES = [(name, eot) for name in TEMPLATES for eot in (True, False) if not (name == "generation" and not eot)]


@pytest.mark.parametrize(("name", "end_of_turn"), CASES)
def test_spans_and_loss_positions_equal_the_reference(tok, name: str, end_of_turn: bool):
    template, piece = TEMPLATES[name]
    rng = random.Random(f"{name}-{end_of_turn}")
    chats = [conversation(rng) for _ in range(40)]
    spec = DataSpec("<mem>", label_column=None, messages_column="messages", end_of_turn=end_of_turn)
    rows = TextRows(spec, [""] * len(chats), None, None, None, "unlabelled", messages=chats)
    rows = render_chat(rows, tok, template)
    for chat, text, spans in zip(chats, rows.texts, rows.spans, strict=True):
        ref_text, ref_spans = reference(piece, chat, end_of_turn)
        assert text == ref_text
        if name == "generation":  # spans from token offsets: compare what they cover, token by token
            assert loss_positions(tok, text, spans) == loss_positions(tok, text, ref_spans), chat
        else:
            assert spans == ref_spans, chat
    keep = [i for i, s in enumerate(rows.spans) if loss_positions(tok, rows.texts[i], s)]
    pick = {name: [getattr(rows, name)[i] for i in keep] for name in ("texts", "spans", "messages")}
    kept = dataclasses.replace(rows, **pick)
    enc = tokenize(tok, kept, MAX_LENGTH)
    for i, mask in zip(keep, enc.assistant, strict=True):  # what precompute caches and the student trains on
        ref_text, ref_spans = reference(piece, chats[i], end_of_turn)
        assert np.flatnonzero(mask[1:]).tolist() == loss_positions(tok, ref_text, ref_spans)


def test_a_one_letter_answer_is_trained_on_the_answer_not_the_header(tok):
    """The case that put the loss on the role header: `a` occurs in `assistant` and `im_start`."""
    chat = [{"role": "user", "content": "which?"}, {"role": "assistant", "content": "a"}]
    template = TEMPLATES["chatml"][0]
    text, spans = assistant_spans(tok, chat, template, 0, end_of_turn=False)
    assert [text[lo:hi] for lo, hi in spans] == ["a"]
    assert spans[0][0] == text.index("assistant\n") + len("assistant\n")
    text, spans = assistant_spans(tok, chat, template, 0)
    assert [text[lo:hi] for lo, hi in spans] == ["a<|im_end|>"]


def test_the_rule_is_in_the_fingerprint(tok):
    chats = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]]
    prints = []
    for eot in (True, False):
        spec = DataSpec("<mem>", label_column=None, messages_column="messages", end_of_turn=eot)
        rows = render_chat(TextRows(spec, [""], None, None, None, "unlabelled", messages=chats), tok)
        assert rows.fingerprint == fingerprint_rows(rows)
        prints.append(rows.fingerprint)
    assert prints[0] != prints[1]


def test_generation_blocks_refuse_the_switch_in_one_line(tok):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}]
    with pytest.raises(SkdError) as err:
        assistant_spans(tok, chat, TEMPLATES["generation"][0], 3, end_of_turn=False)
    assert "\n" not in str(err.value) and "--no-end-of-turn" in str(err.value)


def test_a_header_that_depends_on_the_content_is_refused(tok):
    template = (
        "{% for m in messages %}<{{ m['role'] }}{% if m['content'] | length > 3 %} long{% endif %}>"
        "{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    )
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(SkdError) as err:
        assistant_spans(tok, chat, template, 5)
    assert "row 5" in str(err.value) and "{% generation %}" in str(err.value) and "\n" not in str(err.value)


def test_cli_switch_reaches_the_data_spec(tmp_path: Path):
    from click.testing import CliRunner
    from skdcache.cli.main import cli

    done = CliRunner().invoke(cli, ["precompute", "--help"])
    assert "--no-end-of-turn" in done.output


def test_a_cache_of_another_rule_or_an_older_version_is_named_in_one_line(tok):
    from skdcache.cache.manifest import DatasetInfo
    from skdcache.data.chat import check_template

    chats = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    spec = DataSpec("<mem>", label_column=None, messages_column="messages")
    raw = TextRows(spec, [""], None, None, None, "unlabelled", messages=chats)
    raw.fingerprint = fingerprint_rows(raw)
    rows = render_chat(raw, tok)
    for cached, words in ((False, "--no-end-of-turn"), (None, "older skdcache")):
        info = DatasetInfo(
            n_rows=1, messages_fingerprint=rows.messages_fingerprint, chat_template=OWN, end_of_turn=cached
        )
        with pytest.raises(SkdError) as err:
            check_template([info], rows, "fix")
        assert words in str(err.value) and "\n" not in str(err.value)
    check_template(
        [DatasetInfo(n_rows=1, messages_fingerprint=rows.messages_fingerprint, chat_template=OWN, end_of_turn=True)],
        rows,
        "fix",
    )
