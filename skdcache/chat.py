"""Chat rows for causal LMs: conversations rendered with a chat template, and where the assistant turns are.

A conversation becomes text with `tokenizer.apply_chat_template`; the loss sits on the assistant turns only.
Those are found as character spans of the rendered text, so they hold for any tokenizer that reads it:

- a template with `{% generation %}` blocks marks them itself (`return_assistant_tokens_mask`);
- otherwise each assistant message is found by incremental rendering: the text the conversation up to that
  message adds to the text up to the message before, searched for the message's content.

The template is part of the rows' fingerprint, so caches of one template are never read for another
(docs/chat-data.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from skdcache.data import TextRows, fingerprint_rows
from skdcache.errors import SkdError

GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")


def chat_template(tokenizer, override: str | None = None, fix: str = "pass --chat-template FILE") -> str:
    """The template to render with: `override` (a file path or the template itself), else the tokenizer's."""
    if override:
        path = Path(override).expanduser()
        if "{" not in override and not path.is_file():
            raise SkdError(f"chat template file {override} does not exist; check --chat-template")
        return path.read_text() if "{" not in override else override
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise SkdError(f"tokenizer {name} has no chat template; {fix} (a Jinja chat template)")
    return template


def template_hash(template: str | None) -> str | None:
    return None if template is None else hashlib.blake2b(template.encode(), digest_size=8).hexdigest()


def render_chat(rows: TextRows, tokenizer, override: str | None = None, fix: str = "pass --chat-template FILE"):
    """`rows` (loaded from a messages column) rendered with the chat template, with their assistant spans and
    a fingerprint over the template, the rendered texts and the spans."""
    if rows.messages is None:
        return rows
    template = chat_template(tokenizer, override, fix)
    texts, spans = [], []
    for i, messages in enumerate(rows.messages):
        text, found = assistant_spans(tokenizer, messages, template, i)
        texts.append(text)
        spans.append(found)
    out = dataclasses.replace(
        rows, texts=texts, chat_template=template, spans=spans, messages_fingerprint=rows.fingerprint
    )
    out.fingerprint = fingerprint_rows(out)
    return out


def check_template(cached: list, rows: TextRows, fix: str) -> None:
    """Refuse, in one line, chat rows whose conversations were cached but rendered with another template.

    `cached`: the `DatasetInfo` records of the caches at hand."""
    for info in cached:
        same_chats = info.messages_fingerprint and info.messages_fingerprint == rows.messages_fingerprint
        if same_chats and info.chat_template != rows.chat_template:
            raise SkdError(
                f"these conversations were cached with another chat template ({template_hash(info.chat_template)}, "
                f"now {template_hash(rows.chat_template)}); {fix}, or re-run precompute with this template"
            )


def render(tokenizer, messages: list[dict], template: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception as exc:  # jinja raises its own types (TemplateError, UndefinedError, ...)
        raise SkdError(f"the chat template failed on a conversation: {str(exc).splitlines()[0]}") from exc


def assistant_spans(tokenizer, messages: list[dict], template: str, row: int) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    text = render(tokenizer, messages, template)
    if GENERATION_BLOCK.search(template):
        return text, _generation_spans(tokenizer, messages, template, text, row)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], template) if i else ""
        upto = render(tokenizer, messages[: i + 1], template)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise SkdError(
                f"row {row}: the chat template does not render a conversation's start as a prefix of the whole; "
                "mark assistant turns with {% generation %} in the template"
            )
        content = message["content"]
        at = upto.find(content, len(before))
        if at < 0 and content.strip():  # templates often strip the content
            content = content.strip()
            at = upto.find(content, len(before))
        if at < 0:
            raise SkdError(f"row {row}: assistant message {i} is not in the rendered text; check the chat template")
        if content:
            spans.append((at, at + len(content)))
    return text, spans


def _generation_spans(tokenizer, messages, template, text, row) -> list[tuple[int, int]]:
    """Character spans of the tokens the template's {% generation %} blocks mark."""
    marked = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(marked["input_ids"]) != list(enc["input_ids"]):
        raise SkdError(f"row {row}: apply_chat_template tokenises the conversation differently from its text")
    spans: list[tuple[int, int]] = []
    for (lo, hi), flag in zip(enc["offset_mapping"], marked["assistant_masks"], strict=True):
        if not flag or hi <= lo:
            continue
        if spans and spans[-1][1] >= lo:
            spans[-1] = (spans[-1][0], hi)
        else:
            spans.append((lo, hi))
    return spans
