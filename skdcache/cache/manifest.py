"""The manifest: what a teacher cache holds and where it came from, typed, as stored on disk.

It is the group's ``attributes["skdcache"]`` in ``zarr.json``. Its JSON keys are the format: readers of any
skdcache version parse it, so fields are only ever added (optional, ``None`` when an older manifest lacks
them), never renamed. Parsing follows zarr-python's ``metadata/v3.py``: small ``parse_*`` functions that
return the value or raise one line naming the fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from skdcache.cache.store import read_json
from skdcache.errors import CacheError, GroupIncomplete

# v2 (token arrays may carry a lossless coding, recorded per array in the layout; see idcoding.py) is written
# for caches with a coded array, v1 for the others (unchanged). Both are read. The cache key keeps the number
# 1 (fingerprint.KEY_FORMAT_VERSION): v2 stores the same targets, so a v1 cache found at its key is used.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_ATTR = "skdcache"
STATES = ("writing", "complete")

R = TypeVar("R", bound="_Record")


def damaged(what: str) -> CacheError:
    """The one message for a manifest that cannot be right: it names the fix."""
    return CacheError(f"manifest {what}; the cache was edited or damaged, run `skdcache verify` and recompute it")


_damaged = damaged


def parse_count(data: object, what: str, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number read from metadata (bool is not one); bounds keep forged sizes from reaching allocations."""
    whole = isinstance(data, int) and not isinstance(data, bool)
    if not whole or data < minimum or (maximum is not None and data > maximum):
        bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise damaged(f"{what} is {data!r}, not a whole number {bounds}")
    return data


# what a record field's annotation admits, so a wrong JSON type is refused where it is parsed, not deep in a caller
_KINDS = {
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def _fits(annotation: str, value: object) -> bool:
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        return "None" in kinds
    return any(_KINDS[k](value) for k in kinds if k in _KINDS)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def parse_format_version(data: object) -> int:
    if isinstance(data, bool) or data not in READABLE_VERSIONS:
        readable = " and ".join(f"v{v}" for v in READABLE_VERSIONS)
        raise CacheError(
            f"written by cache format v{data}, this skdcache reads {readable}; recompute it with this "
            f"version (or install the skdcache that wrote it)"
        )
    return int(data)


def parse_state(data: object) -> str:
    if data not in STATES:
        raise _damaged(f"state {data!r} is not one of {list(STATES)}")
    return str(data)


def parse_mapping(data: object, what: str) -> dict:
    if not isinstance(data, Mapping):
        raise _damaged(f"field {what!r} is {type(data).__name__}, not an object")
    return dict(data)


@dataclass(frozen=True)
class _Record:
    """A typed JSON object; fields are keyword-only and in on-disk key order.

    Keys this version does not know (written by a newer one) are kept in `extra` and written back, so
    rewriting a manifest never drops them. `record["key"]` reads a field by its JSON key, for code written
    against the untyped manifest (and branches still being migrated); new code uses attributes.
    """

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    @classmethod
    def from_dict(cls: type[R], data: object, where: str = "") -> R:
        d = parse_mapping(data, where or cls.__name__)
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        required = [f.name for f in dataclasses.fields(cls) if _required(f)]
        missing = [k for k in required if k not in d]
        if missing:
            raise _damaged(f"{where or cls.__name__} lacks {missing}")
        for f in dataclasses.fields(cls):
            if f.name in d and f.name != "extra" and not _fits(f.type, d[f.name]):
                raise _damaged(f"{where or cls.__name__}.{f.name} is {d[f.name]!r}, not {f.type}")
        return cls(**{k: d[k] for k in names if k in d}, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**d, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass(frozen=True, kw_only=True)
class TeacherInfo(_Record):
    """The teacher that produced the targets; `source` is as the user typed it (shown in listings)."""

    name: str
    source: str | None = None
    revision: str | None = None
    head: str | None = None
    weights_hash: str | None = None
    num_parameters: int | None = None
    num_labels: int | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    # absolute path of a local teacher directory, so online mode finds it from any working directory;
    # None for hub ids and in manifests written before it was recorded
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetInfo(_Record):
    """The rows the targets are for; the same record as the dataset folder's dataset.json."""

    fingerprint: str = ""
    n_rows: int
    split: str | None = None
    source: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_names: list[str] | None = None
    task: str | None = None
    limit: int | None = None
    # chat rows only (docs/chat-data.md): the messages column, the template text, the conversations' fingerprint
    messages_column: str | None = None
    chat_template: str | None = None
    messages_fingerprint: str | None = None
    end_of_turn: bool | None = None  # the end-of-turn markers carry loss (None: written before the rule was kept)

    def to_dict(self) -> dict:
        """Without the chat keys for other rows, so their records keep the keys older versions wrote."""
        chat = ("messages_column", "chat_template", "messages_fingerprint", "end_of_turn")
        return {k: v for k, v in super().to_dict().items() if not (k in chat and v is None)}


@dataclass(frozen=True, kw_only=True)
class MetricInfo(_Record):
    """The teacher's metric on a labelled eval split (teacher-rank sampling ranks teachers by `value`)."""

    split: str | None = None
    name: str
    value: float
    all: dict | None = None
    n_rows: int | None = None
    dataset_fingerprint: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Group attributes of a teacher cache; `state` moves from "writing" to "complete".

    Plain dicts given for `teacher`, `dataset` or `metric` are parsed, so a manifest built from JSON and
    one built in code compare equal.
    """

    format_version: int
    teacher: TeacherInfo
    tokenizer_hash: str
    dataset: DatasetInfo
    targets: dict  # format.TargetSpec.to_dict()
    layout: dict  # format.Layout.to_dict(): rows_per_block, n_blocks, arrays {name: {shape, dtype, chunks, shards}}
    metric: MetricInfo | None = None
    versions: dict = field(default_factory=dict)
    created_at: str = ""
    completed_at: str | None = None
    state: str = "writing"
    cache_key: str = ""

    def __post_init__(self) -> None:
        parse = {"teacher": TeacherInfo, "dataset": DatasetInfo, "metric": MetricInfo}
        for name, cls in parse.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                object.__setattr__(self, name, cls.from_dict(value, name))
        parse_state(self.state)
        parse_count(self.dataset.n_rows, "dataset.n_rows")
        for name in ("targets", "layout", "versions"):
            parse_mapping(getattr(self, name), name)
        for name in ("tokenizer_hash", "cache_key", "created_at"):
            if not isinstance(getattr(self, name), str):
                raise damaged(f"field {name!r} is {type(getattr(self, name)).__name__}, not a string")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["teacher"], d["dataset"] = self.teacher.to_dict(), self.dataset.to_dict()
        d["metric"] = self.metric.to_dict() if self.metric is not None else None
        return d

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        d = parse_mapping(data, MANIFEST_ATTR)
        parse_format_version(d.get("format_version"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CacheError(f"manifest has fields {unknown} this skdcache does not know; upgrade skdcache to read it")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f))
        if missing:
            raise _damaged(f"lacks {missing}")
        return cls(**d)

    def completed(self, metric: MetricInfo | dict | None, completed_at: str) -> Manifest:
        """This manifest with state "complete"."""
        return dataclasses.replace(self, metric=metric, state="complete", completed_at=completed_at)


def manifest_attrs(zarr_json: object) -> dict | None:
    """The raw manifest in a group's parsed zarr.json, or None when the group has none.

    A zarr.json whose document or attributes are not JSON objects is damage, not a missing manifest: a missing
    one means "creation was cut short", and that group would be recreated, its data thrown away.
    """
    attributes = zarr_json.get("attributes", {}) if isinstance(zarr_json, Mapping) else None
    attrs = attributes.get(MANIFEST_ATTR) if isinstance(attributes, Mapping) else []
    if attrs is not None and not isinstance(attrs, Mapping):
        raise damaged("in zarr.json is not a JSON object (the document, its attributes or the manifest)")
    return attrs


def read_manifest(group_path: Path) -> Manifest:
    """The manifest of the group at `group_path`.

    Raises GroupIncomplete when zarr.json exists without a manifest (creation was cut short, or it is some
    other zarr group), CacheError when the manifest is of another format version or damaged.
    """
    try:
        attrs = manifest_attrs(read_json(group_path / "zarr.json"))
    except CacheError as exc:
        if str(group_path) in str(exc):  # read_json names the file already
            raise
        raise CacheError(f"{group_path}: {exc}") from None
    if attrs is None:
        raise GroupIncomplete(f"{group_path} is not an skdcache teacher cache (no '{MANIFEST_ATTR}' attribute)")
    try:
        return Manifest.from_dict(attrs)
    except CacheError as exc:
        raise CacheError(f"{group_path}: {exc}") from None


def is_complete(group_path: Path) -> bool:
    """True when the group at `group_path` holds a readable manifest in state complete."""
    try:
        return (group_path / "zarr.json").exists() and read_manifest(group_path).state == "complete"
    except CacheError:
        return False
