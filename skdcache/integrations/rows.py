"""Match an in-memory `datasets.Dataset` to its teacher caches: same rows, same order, same labels.

The cache records which columns it fingerprinted; we fingerprint the dataset handed to a trainer with those
columns, exactly as `load_rows` does, so a shuffled, filtered or edited dataset is refused before step 1
instead of being silently paired with another row's targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skdcache.cache.catalog import existing_root, list_caches
from skdcache.cache.manifest import DatasetInfo
from skdcache.cache.reader import TeacherCache
from skdcache.cache.roots import open_root
from skdcache.cache.selection import CacheEntry, select_teachers
from skdcache.data.chat import check_template, render_chat
from skdcache.data.rows import DataSpec, TextRows, chat_rows, fingerprint_rows
from skdcache.errors import CacheError, SkdError
from skdcache.training.plan import open_team

ROW_COLUMN = "skd_row"


def with_row_index(dataset, column: str = ROW_COLUMN):
    """`dataset` with a `skd_row` column 0..n-1: the cache row each example's targets are read from.

    Add it last, after any map/filter/shuffle; the trainer refuses a dataset whose rows no longer match the cache.
    """
    if column in dataset.column_names:
        return dataset
    return dataset.add_column(column, list(range(len(dataset))))


def dataset_rows(dataset, info: DatasetInfo, tokenizer=None, chat_template: str | None = None) -> TextRows:
    """The rows of `dataset` as `load_rows` would read them with the cache's columns and label names; chat rows
    rendered with `chat_template` (default: the tokenizer's)."""
    if info.messages_column is not None:
        spec = DataSpec(
            "<in-memory dataset>",
            info.split or "train",
            label_column=None,
            messages_column=info.messages_column,
            end_of_turn=bool(info.end_of_turn),  # the cache's rule (None: cached before end-of-turn tokens)
        )
        rows = chat_rows(spec, dataset, f"the dataset (the cache's messages column; columns: {dataset.column_names})")
        fix = "pass SkdTrainer(chat_template=...) or set processing_class.chat_template"
        rows = render_chat(rows, tokenizer, chat_template, fix)
        check_template([info], rows, fix)
        return rows
    for role, column in (("text", info.text_column), ("pair", info.text_pair_column), ("label", info.label_column)):
        if column is not None and column not in dataset.column_names:
            raise SkdError(
                f"the dataset has no {column!r} column (the cache's {role} column): keep the columns the "
                f"cache was built from (columns now: {dataset.column_names})"
            )
    texts = [_text(v, info.text_column) for v in dataset[info.text_column]]
    pairs = [_text(v, info.text_pair_column) for v in dataset[info.text_pair_column]] if info.text_pair_column else None
    labels = None
    if info.label_column is not None:
        raw = list(dataset[info.label_column])
        if info.task == "regression":
            labels = np.asarray(raw, dtype=np.float32)
        else:
            names = getattr(dataset.features.get(info.label_column), "names", None)  # a ClassLabel column
            raw = [names[v] if names is not None and isinstance(v, int) else v for v in raw]
            index = {name: i for i, name in enumerate(info.label_names or [])}
            unknown = next((v for v in raw if str(v) not in index), None)
            if unknown is not None:
                raise SkdError(
                    f"label {unknown!r} is not one of the cache's labels {info.label_names}: "
                    f"pass the rows the cache was built from"
                )
            labels = np.asarray([index[str(v)] for v in raw], dtype=np.int64)
    spec = DataSpec(
        "<in-memory dataset>", info.split or "train", info.text_column, info.text_pair_column, info.label_column
    )
    rows = TextRows(spec, texts, pairs, labels, info.label_names, info.task or "unlabelled")
    rows.fingerprint = fingerprint_rows(rows)
    return rows


def _text(value, column: str) -> str:
    if not isinstance(value, str):
        raise SkdError(f"column {column!r} holds {type(value).__name__} values, not text: keep the raw text column")
    return value


def open_dataset_team(
    dataset, cache: str | Path, teachers: list[str] | None, mode: str = "skd", tokenizer=None, chat_template=None
):
    """(rows, caches): the dataset read with its caches' columns, and the team cached for exactly these rows
    (chat rows rendered with `chat_template`, default the tokenizer's).

    Raises a one-line `CacheError` naming the first teacher when the dataset is not the one it was cached for.
    """
    if not hasattr(dataset, "column_names"):
        raise SkdError(
            f"train_dataset is a {type(dataset).__name__}: pass the datasets.Dataset the caches were built from"
        )
    root = open_root(str(cache))
    if root.is_remote:  # published groups, by their manifests; open_team mirrors the chosen ones whole
        remote = root.remote()
        listed = [CacheEntry(root.path / fp / m.cache_key, d, m) for fp, d, m in remote.manifests()]
    else:
        listed = list_caches(existing_root(root.path))
    entries = [e for e in listed if e.manifest and (teachers is None or e.name in teachers)]
    if not entries:
        named = f" named {', '.join(teachers)}" if teachers else ""
        raise SkdError(f"no teacher cache{named} in {root}; run `skdcache precompute` on this data first")
    setups = {_setup(e.manifest.dataset): e for e in entries}
    rows = None
    for entry in setups.values():
        rows = dataset_rows(dataset, entry.manifest.dataset, tokenizer, chat_template)
        if select_teachers(entries, rows.fingerprint, None, str(root)):
            break
    else:  # no cache was built from these rows: say why with the cache's own check
        if root.is_remote:
            raise CacheError(
                f"no teacher at {root} was cached from these rows (dataset {rows.fingerprint[:12]}); pass the "
                "dataset precompute read, unshuffled and unfiltered"
            )
        TeacherCache(entries[0].path).check_dataset(rows.fingerprint, len(rows))
    cache_root = str(root) if root.is_remote else str(root.path)
    return rows, open_team(rows, cache_root, teachers, single=mode == "single")


def _setup(info: DatasetInfo) -> tuple:
    return (
        info.text_column,
        info.text_pair_column,
        info.label_column,
        tuple(info.label_names or ()),
        info.task,
        info.messages_column,
    )
