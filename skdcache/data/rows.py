"""Load a labelled text dataset and fingerprint the exact rows used.

The fingerprint hashes the text, pair and label values row by row, in order, so that it identifies the data
independently of where it came from and of any tokenizer: two caches built from the same rows agree, and a
reader given reordered or edited rows refuses to serve targets computed for other rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from skdcache import fields
from skdcache.data.tables import available_splits, load_split
from skdcache.errors import SkdError


@dataclass(frozen=True)
class DataSpec:
    """Where the rows come from and which columns matter (the flags of `--data`)."""

    source: str
    split: str = "train"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = "label"
    config_name: str | None = None
    limit: int | None = fields.flag(None, "Use only the first N rows of the split.", min=1)
    messages_column: str | None = None  # chat data: a list of {"role", "content"} per row (docs/chat-data.md)
    chat_template: str | None = None  # a Jinja file overriding the tokenizer's chat template
    end_of_turn: bool = True  # chat data: the end-of-turn marker after each assistant content carries loss too


@dataclass
class TextRows:
    """The rows of one split, in order, with labels encoded as class ids or floats."""

    spec: DataSpec
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray | None  # [n] int64 class ids, or float32 for regression
    label_names: list[str] | None  # None for regression or no labels
    task: str  # "classification" | "regression" | "unlabelled"
    fingerprint: str = field(default="")
    messages: list[list[dict]] | None = None  # chat rows: the conversations `texts` are rendered from
    chat_template: str | None = None  # chat rows: the template they were rendered with (None: not yet)
    spans: list[list[tuple[int, int]]] | None = None  # chat rows: assistant character spans of each text
    messages_fingerprint: str | None = None  # chat rows: the fingerprint of the conversations before rendering

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int | None:
        if self.task == "regression":
            return 1
        return len(self.label_names) if self.label_names else None


def _label_info(spec: DataSpec, table) -> tuple[str, list[str] | None]:
    """Decide the task and the class names, looking at every split so that ids agree across splits."""
    import datasets

    feature = table.features.get(spec.label_column)
    if isinstance(feature, datasets.ClassLabel):
        return "classification", list(feature.names)
    values = table[spec.label_column]
    if not values:
        return "classification", []
    if all(isinstance(v, str) for v in values):
        names: set[str] = set()
        for split in available_splits(spec):
            other = table if split == spec.split else load_split(spec, split)
            if spec.label_column in other.column_names:
                names.update(str(v) for v in other[spec.label_column] if v is not None)
        return "classification", sorted(names)
    if isinstance(values[0], bool) or all(isinstance(v, int) for v in values):
        top = 0
        for split in available_splits(spec):  # every split, so ids agree whatever --split / --limit
            other = table if split == spec.split else load_split(spec, split)
            if spec.label_column in other.column_names:
                top = max([top, *(int(v) for v in other[spec.label_column] if v is not None)])
        return "classification", [str(i) for i in range(top + 1)]
    return "regression", None


def load_rows(spec: DataSpec) -> TextRows:
    """Read one split into memory and fingerprint it; every error names the flag to change."""
    table = full_table = load_split(spec, spec.split)
    if spec.limit is not None:
        table = table.select(range(min(spec.limit, len(table))))
    if len(table) == 0:
        raise SkdError(f"split {spec.split!r} of {spec.source} is empty; pick another --split")
    if spec.messages_column is not None:
        return chat_rows(spec, table, f"{spec.source} (columns: {table.column_names}); set --messages-column")
    for flag, column in (
        ("--text-column", spec.text_column),
        ("--text-pair-column", spec.text_pair_column),
        ("--label-column", spec.label_column),
    ):
        if column is not None and column not in table.column_names:
            raise SkdError(f"column {column!r} not in {spec.source} (columns: {table.column_names}); set {flag}")
    texts = [_as_text(t, spec.text_column) for t in table[spec.text_column]]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise SkdError(
            f"{len(empty)} rows of {spec.text_column!r} are empty (first: row {empty[0]}); drop or fill them first"
        )
    pairs = (
        [_as_text(t, spec.text_pair_column) for t in table[spec.text_pair_column]] if spec.text_pair_column else None
    )
    labels, names, task = None, None, "unlabelled"
    if spec.label_column is not None:
        task, names = _label_info(spec, full_table)  # the whole split: --limit must not change the label set
        raw = table[spec.label_column]
        if any(v is None for v in raw):
            raise SkdError(f"column {spec.label_column!r} has empty labels; clean the data or drop --label-column")
        if task == "regression":
            labels = np.asarray(raw, dtype=np.float32)
            if not np.isfinite(labels).all():
                raise SkdError(f"column {spec.label_column!r} holds NaN/inf labels; clean the data")
        else:
            index = {name: i for i, name in enumerate(names)}
            labels = np.asarray([index[str(v)] for v in raw], dtype=np.int64)
    rows = TextRows(spec, texts, pairs, labels, names, task)
    rows.fingerprint = fingerprint_rows(rows)
    return rows


def chat_rows(spec: DataSpec, table, missing: str) -> TextRows:
    """Conversations, not yet rendered: `chat.render_chat` turns them into text with a tokenizer's template.
    `missing` ends the error for a table without the messages column."""
    column = spec.messages_column
    if column not in table.column_names:
        raise SkdError(f"column {column!r} not in {missing}")
    if spec.label_column is not None:
        raise SkdError(f"chat data trains on its assistant turns, not labels: drop --label-column {spec.label_column}")
    messages = [conversation(v, column, i) for i, v in enumerate(table[column])]
    texts = [json.dumps(m, ensure_ascii=False, sort_keys=True) for m in messages]
    rows = TextRows(spec, texts, None, None, None, "unlabelled", messages=messages)
    rows.fingerprint = fingerprint_rows(rows)
    return rows


def conversation(value, column: str, row: int) -> list[dict]:
    """One row's messages as plain dicts (keys left empty by Arrow dropped); csv cells may hold them as JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    ok = isinstance(value, list) and value and all(isinstance(m, dict) for m in value)
    ok = ok and all(isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise SkdError(f'row {row} of {column!r} is not a list of {{"role", "content"}} messages; fix the data')
    return [{k: v for k, v in m.items() if v is not None} for m in value]


def _as_text(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise SkdError(f"column {column!r} holds {type(value).__name__} values, not text; set --text-column")
    return value


def fingerprint_rows(rows: TextRows) -> str:
    """blake2b over the canonical JSON of every (text, pair, label) in order, plus the label names."""
    h = hashlib.blake2b(digest_size=16)
    header = {"task": rows.task, "label_names": rows.label_names, "pair": rows.pairs is not None}
    if rows.messages is not None:  # chat: the template and, per row, the rendered text and assistant spans
        header["chat_template"] = rows.chat_template
        if rows.spans is not None:  # rendered: the rule, besides the spans it gives (not the conversations')
            header["end_of_turn"] = rows.spec.end_of_turn
    h.update(json.dumps(header, sort_keys=True).encode())
    for i, text in enumerate(rows.texts):
        label = None if rows.labels is None else rows.labels[i].item()
        record = [text, rows.pairs[i] if rows.pairs is not None else None, label]
        if rows.spans is not None:
            record.append(rows.spans[i])
        h.update(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Encoded:
    """Token ids per row, unpadded; `type_ids` only for models that use segment ids (pairs in BERT)."""

    ids: list[list[int]]
    type_ids: list[list[int]] | None
    assistant: list[np.ndarray] | None = None  # chat rows: [len(ids)] bool, the assistant tokens

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def tokenize(tokenizer, rows: TextRows, max_length: int) -> Encoded:
    """Tokenize every row without padding (each model tokenizes with its own tokenizer)."""
    if rows.messages is not None:
        return _tokenize_chat(tokenizer, rows, max_length)
    ids: list[list[int]] = []
    type_ids: list[list[int]] | None = [] if "token_type_ids" in tokenizer.model_input_names else None
    step = 2048
    for start in range(0, len(rows), step):
        texts = rows.texts[start : start + step]
        pairs = rows.pairs[start : start + step] if rows.pairs is not None else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
        ids.extend(enc["input_ids"])
        if type_ids is not None:
            type_ids.extend(enc["token_type_ids"])
    return Encoded(ids, type_ids)


def _tokenize_chat(tokenizer, rows: TextRows, max_length: int) -> Encoded:
    """Rendered conversations: no added special tokens (the template writes them), and a token is an assistant
    token when its characters overlap an assistant span."""
    if rows.spans is None:
        raise SkdError("chat rows must be rendered with a chat template first (skdcache.data.chat.render_chat)")
    if not getattr(tokenizer, "is_fast", False):
        raise SkdError(f"chat data needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not")
    enc = tokenizer(
        rows.texts,
        truncation=True,
        max_length=max_length,
        padding=False,
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    assistant = []
    for row, (offsets, spans) in enumerate(zip(enc["offset_mapping"], rows.spans, strict=True)):
        mask = np.zeros(len(offsets), dtype=bool)
        for lo, hi in spans:
            mask |= np.array([s < hi and e > lo for s, e in offsets], dtype=bool)
        if not mask[1:].any():
            raise SkdError(f"row {row} keeps no assistant token within --max-length {max_length}; raise it")
        assistant.append(mask)
    type_ids = [[0] * len(x) for x in enc["input_ids"]] if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded(enc["input_ids"], type_ids, assistant)


def mlm_positions(ids: list[int], special: list[int], probability: float, seed: int, row: int) -> np.ndarray:
    """Deterministic masked positions of one row: the same for the teacher at precompute and the student.

    Seeded by (seed, row) alone, so it does not depend on batching, shard order or process count.
    """
    candidates = np.flatnonzero(np.asarray(special) == 0)
    if candidates.size == 0:
        return np.zeros(0, dtype=np.int64)
    n = max(1, int(round(probability * candidates.size)))
    rng = np.random.default_rng([seed, row])
    return np.sort(rng.choice(candidates, size=n, replace=False)).astype(np.int64)


def target_mask(ids: list[list[int]], positions: list[np.ndarray], mask_id: int | None):
    """[B, T] bool mask of the positions carrying a token-level loss; with `mask_id` (MLM) those tokens of
    `ids` are replaced by the mask token in place, the input the teacher saw at precompute."""
    import torch

    mask = torch.zeros((len(ids), max(len(x) for x in ids)), dtype=torch.bool)
    for i, pos in enumerate(positions):
        mask[i, pos] = True
        if mask_id is not None:
            for p in pos:
                ids[i][p] = mask_id
    return mask


def pad_batch(ids: list[list[int]], type_ids: list[list[int]] | None, pad_id: int) -> dict:
    """Right-pad a list of rows into int64 tensors input_ids / attention_mask (/ token_type_ids) [B, T]."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if type_ids is not None:
        types = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(type_ids):
            types[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        batch["token_type_ids"] = types
    return batch
