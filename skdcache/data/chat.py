"""Chat rows for causal LMs: conversations rendered with a chat template, and where the assistant turns are.

A conversation becomes text with `tokenizer.apply_chat_template`; the loss sits on the assistant turns only.
Those are found as character spans of the rendered text, so they hold for any tokenizer that reads it:

- a template with `{% generation %}` blocks marks them itself (`return_assistant_tokens_mask`);
- otherwise each assistant message is found by incremental rendering: the conversation up to that message
  rendered with a probe for its content says where the header ends and the content starts; the span runs
  from there over the content and, by default (`DataSpec.end_of_turn`), over the end-of-turn marker the
  template writes right after it.

The template is part of the rows' fingerprint, so caches of one template are never read for another
(docs/chat-data.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from skdcache.data.rows import TextRows, fingerprint_rows
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
        text, found = assistant_spans(tokenizer, messages, template, i, rows.spec.end_of_turn)
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
        if same_chats and info.end_of_turn is None:  # before the rule was kept, spans could land in headers
            raise SkdError(
                "these conversations were cached by an older skdcache, whose assistant spans could miss the answer; "
                "re-run precompute"
            )
        if same_chats and info.end_of_turn != rows.spec.end_of_turn:
            flag = "--end-of-turn" if info.end_of_turn else "--no-end-of-turn"
            raise SkdError(
                f"these conversations were cached with end-of-turn tokens {'' if info.end_of_turn else 'not '}"
                f"carrying loss; pass {flag} as at precompute, or re-run precompute with this rule"
            )


def render(tokenizer, messages: list[dict], template: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    except Exception as exc:  # jinja raises its own types (TemplateError, UndefinedError, ...)
        raise SkdError(f"the chat template failed on a conversation: {str(exc).splitlines()[0]}") from exc


# written as an assistant message's content to find where the template puts it: private-use characters, which
# no template writes, trims or escapes
PROBE = "\ue000skd\ue001"


def assistant_spans(
    tokenizer, messages: list[dict], template: str, row: int, end_of_turn: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns: each content and,
    with `end_of_turn`, what the template writes right after it to close the turn (trailing whitespace aside)."""
    text = render(tokenizer, messages, template)
    if GENERATION_BLOCK.search(template):
        if not end_of_turn:
            raise SkdError(
                f"row {row}: this chat template marks assistant turns with {{% generation %}} blocks, which decide "
                "what carries loss; drop --no-end-of-turn (end_of_turn=False) or edit the blocks"
            )
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
        at, end = _content_span(tokenizer, messages, i, template, before, upto, row)
        if end_of_turn:  # the turn's closing marker, so that the student learns to stop
            end += len(upto[end:].rstrip())
        if end > at:
            spans.append((at, end))
    return text, spans


def _content_span(tokenizer, messages, i, template, before, upto, row) -> tuple[int, int]:
    """Where message `i`'s content sits in `upto`: right after the header the template writes before it, found by
    rendering the turn with a probe for content (a search would match the content inside the header)."""
    probed = render(tokenizer, [*messages[:i], {**messages[i], "content": PROBE}], template)
    at = probed.find(PROBE)
    if at < len(before) or probed.count(PROBE) != 1 or upto[:at] != probed[:at]:
        raise SkdError(
            f"row {row}: the chat template writes assistant message {i}'s header differently for other content; "
            "mark assistant turns with {% generation %} in the template"
        )
    content = messages[i]["content"]
    for written in (content, content.strip(), content.lstrip(), content.rstrip()):  # templates often trim it
        if upto.startswith(written, at):
            return at, at + len(written)
    raise SkdError(f"row {row}: assistant message {i} is not where the chat template writes it; check the template")


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
