"""Data loading: fingerprints identify the rows, labels are detected, bad input names the flag to change."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, make_tokenizer, write_split

from skdcache import DataSpec, SkdError, load_rows
from skdcache.data.rows import mlm_positions, pad_batch, tokenize


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, records: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "text2", "label", "score"], quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerows(records)
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({**r, "score": float(r["score"])}) + "\n")
    return path


@pytest.fixture
def records(tmp_path: Path) -> list[dict]:
    return _read_csv(write_split(tmp_path / "source.csv", 60, seed=7, pair=True))


def _fp(path: Path, **kw) -> str:
    return load_rows(DataSpec(str(path), text_pair_column="text2", **kw)).fingerprint


def test_fingerprint_stable_and_independent_of_file_format_and_location(tmp_path: Path, records: list[dict]):
    """The same rows give one fingerprint whether read twice, from csv, jsonl or parquet, or from another place."""
    import pandas as pd

    csv_dir, json_dir, pq_dir, copy_dir = (tmp_path / n for n in ("csv", "jsonl", "parquet", "copy"))
    for d in (csv_dir, json_dir, pq_dir):
        d.mkdir()
    _write_csv(csv_dir / "train.csv", records)
    _write_jsonl(json_dir / "train.jsonl", records)
    pd.DataFrame([{**r, "score": float(r["score"])} for r in records]).to_parquet(pq_dir / "train.parquet")
    shutil.copytree(csv_dir, copy_dir)
    fps = {name: _fp(d) for name, d in (("csv", csv_dir), ("jsonl", json_dir), ("pq", pq_dir), ("copy", copy_dir))}
    assert _fp(csv_dir) == fps["csv"]
    assert len(set(fps.values())) == 1, fps
    assert len(fps["csv"]) == 32 and set(fps["csv"]) <= set("0123456789abcdef")
    # the regression view of the same rows is other data (labels are part of the fingerprint)
    assert _fp(csv_dir, label_column="score") == _fp(json_dir, label_column="score") != fps["csv"]
    # a single file is the same rows as a directory holding it
    assert load_rows(DataSpec(str(json_dir / "train.jsonl"), text_pair_column="text2")).fingerprint == fps["csv"]


@pytest.mark.parametrize("edit", ["reorder", "text", "pair", "label", "drop_last", "unpaired"])
def test_fingerprint_changes_with_rows(tmp_path: Path, records: list[dict], edit: str):
    """Reordered, edited, fewer rows, or leaving out the pair column each give another fingerprint."""
    base = tmp_path / "base"
    base.mkdir()
    _write_csv(base / "train.csv", records)
    changed = [dict(r) for r in records]
    if edit == "reorder":
        changed[0], changed[1] = changed[1], changed[0]
    elif edit == "text":
        changed[5]["text"] += " really"
    elif edit == "pair":
        changed[5]["text2"] += " really"
    elif edit == "label":
        changed[5]["label"] = next(x for x in LABELS if x != changed[5]["label"])
    elif edit == "drop_last":
        changed = changed[:-1]
    other = tmp_path / "other"
    other.mkdir()
    _write_csv(other / "train.csv", changed)
    if edit == "unpaired":
        assert load_rows(DataSpec(str(other))).fingerprint != _fp(base)
    else:
        assert _fp(other) != _fp(base)


def test_limit_fingerprints_the_first_rows(tmp_path: Path, records: list[dict]):
    """`limit=n` is exactly the first n rows: same fingerprint as a file holding only those rows."""
    full, head = tmp_path / "full", tmp_path / "head"
    full.mkdir()
    head.mkdir()
    _write_csv(full / "train.csv", records)
    _write_csv(head / "train.csv", records[:20])
    rows = load_rows(DataSpec(str(full), text_pair_column="text2", limit=20))
    assert len(rows) == 20
    assert rows.fingerprint == _fp(head)
    assert rows.texts == [r["text"] for r in records[:20]]


@pytest.mark.parametrize(
    ("label_kind", "column", "task", "names"),
    [
        ("names", "label", "classification", sorted(LABELS)),
        ("ints", "label", "classification", ["0", "1", "2"]),
        ("names", "score", "regression", None),
    ],
)
def test_label_kinds(tmp_path: Path, label_kind: str, column: str, task: str, names):
    """Class names and ints are classification (ids follow the sorted names / the ints); floats are regression."""
    path = write_split(tmp_path / "train.csv", 30, seed=3, label_kind=label_kind)
    raw = _read_csv(path)
    rows = load_rows(DataSpec(str(path), label_column=column))
    assert rows.task == task
    assert rows.label_names == names
    if task == "regression":
        assert rows.num_labels == 1
        assert rows.labels.dtype == np.float32
        np.testing.assert_allclose(rows.labels, [float(r["score"]) for r in raw], rtol=1e-6)
    else:
        assert rows.num_labels == 3
        assert rows.labels.dtype == np.int64
        assert [names[i] for i in rows.labels] == [r["label"] for r in raw]


def test_label_names_come_from_every_split(tmp_path: Path):
    """A class seen only in validation still gets an id, so train and validation ids agree."""
    _write_csv(tmp_path / "train.csv", [{"text": "good", "text2": "", "label": "b", "score": "1"}] * 3)
    _write_csv(tmp_path / "validation.csv", [{"text": "bad", "text2": "", "label": "a", "score": "1"}])
    train = load_rows(DataSpec(str(tmp_path)))
    val = load_rows(DataSpec(str(tmp_path), split="validation"))
    assert train.label_names == val.label_names == ["a", "b"]
    assert train.labels.tolist() == [1, 1, 1] and val.labels.tolist() == [0]


def test_int_label_count_does_not_depend_on_limit(tmp_path: Path):
    """Int labels 0..2 stay 3 classes when `limit` (or the train split) happens to hold only 0 and 1."""
    write_split(tmp_path / "train.csv", 30, seed=1, label_kind="ints")
    write_split(tmp_path / "validation.csv", 30, seed=2, label_kind="ints")
    assert load_rows(DataSpec(str(tmp_path), limit=2)).num_labels == 3


@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"text_column": "body"}, "--text-column"),
        ({"text_pair_column": "second"}, "--text-pair-column"),
        ({"label_column": "y"}, "--label-column"),
        ({"split": "test"}, "--split"),
        ({"limit": 0}, "--split"),
    ],
)
def test_bad_data_names_the_flag(data_dir: Path, kw: dict, flag: str):
    """Missing column / missing split / empty selection: one-line SkdError naming the flag to change."""
    with pytest.raises(SkdError) as err:
        load_rows(DataSpec(str(data_dir), **kw))
    assert flag in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_split_file_raises_skd_error(tmp_path: Path):
    """A split file with a header and no rows is reported as an empty split, naming --split."""
    write_split(tmp_path / "train.csv", 0, seed=1)
    with pytest.raises(SkdError, match="--split"):
        load_rows(DataSpec(str(tmp_path)))


def test_missing_path_and_single_file_split(tmp_path: Path):
    """A missing local path names --data; a single file has only the train split."""
    with pytest.raises(SkdError, match="--data"):
        load_rows(DataSpec(str(tmp_path / "nope")))
    path = write_split(tmp_path / "rows.csv", 5, seed=1)
    assert len(load_rows(DataSpec(str(path)))) == 5
    with pytest.raises(SkdError, match="--split"):
        load_rows(DataSpec(str(path), split="validation"))


def test_tokenize_pairs_truncation_and_padding(tmp_path: Path):
    """Rows tokenize unpadded with segment ids for pairs, truncated to max_length; pad_batch right-pads."""
    tok = make_tokenizer(tmp_path / "tok")
    path = write_split(tmp_path / "train.csv", 40, seed=5, pair=True)
    rows = load_rows(DataSpec(str(path), text_pair_column="text2"))
    enc = tokenize(tok, rows, max_length=16)
    for i in range(len(rows)):
        ref = tok(rows.texts[i], rows.pairs[i], truncation=True, max_length=16)
        assert enc.ids[i] == ref["input_ids"]
        assert enc.type_ids[i] == ref["token_type_ids"]
    assert enc.lengths.max() == 16 and enc.lengths.min() < 16
    assert any(1 in t for t in enc.type_ids)
    batch = pad_batch(enc.ids[:5], enc.type_ids[:5], tok.pad_token_id)
    width = int(enc.lengths[:5].max())
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (5, width)
    for i in range(5):
        n = len(enc.ids[i])
        assert batch["input_ids"][i, :n].tolist() == enc.ids[i]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()


def test_mlm_positions_deterministic_and_non_special():
    """Masked positions depend on (seed, row) only, avoid special tokens, and mask round(p * n) of them."""
    special = [1] + [0] * 20 + [1]
    a = mlm_positions(list(range(22)), special, 0.15, seed=0, row=3)
    assert a.tolist() == mlm_positions([9] * 22, special, 0.15, seed=0, row=3).tolist()
    assert len(a) == 3 and len(set(a.tolist())) == 3 and a.tolist() == sorted(a.tolist())
    assert all(1 <= p <= 20 for p in a)
    draws = {tuple(mlm_positions(list(range(22)), special, 0.15, seed=0, row=r)) for r in range(20)}
    assert len(draws) > 10
    assert mlm_positions([1, 2, 3], [1, 0, 1], 0.15, 0, 0).tolist() == [1]  # at least one per row
    assert mlm_positions([1, 2], [1, 1], 0.15, 0, 0).size == 0
