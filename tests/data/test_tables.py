"""Reading one split: which files count as splits, every local format, and one-line errors naming the flag or file
to fix (a missing split, a single file, a typo'd path, an empty or non-UTF-8 file, an offline hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skdcache.data import tables
from skdcache.data.rows import DataSpec
from skdcache.data.tables import available_splits, load_split
from skdcache.errors import SkdError

ROWS = [{"text": "good movie", "label": "positive"}, {"text": "bad food", "label": "negative"}]


@pytest.fixture(scope="module", autouse=True)
def no_download_counts():
    """`datasets` pings the hub to count every load, even of a local csv: a HEAD whose DNS lookup stalls ~5 s on
    a machine without network. Nothing here needs it."""
    import datasets.config

    with pytest.MonkeyPatch.context() as m:
        m.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        yield


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not a one-line message: {text!r}"
    return text


def write_csv(path: Path, rows: list[dict] = ROWS) -> Path:
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_files_are_recognised_by_name_and_suffix(tmp_path: Path):
    for name in ("train.csv", "validation.jsonl", "test.parquet", "notes.csv", "train.txt", "dev.csv", "README.md"):
        (tmp_path / name).write_text("")
    (tmp_path / "train.csv.bak").write_text("")
    assert tables._split_files(tmp_path) == {
        "test": tmp_path / "test.parquet",
        "train": tmp_path / "train.csv",
        "validation": tmp_path / "validation.jsonl",
    }
    assert available_splits(DataSpec(str(tmp_path))) == ["test", "train", "validation"]


def test_available_splits_of_a_file_or_a_hub_name(tmp_path: Path):
    f = write_csv(tmp_path / "anything.csv")
    assert available_splits(DataSpec(str(f))) == ["train"]
    assert available_splits(DataSpec("org/dataset", split="validation")) == ["validation"]  # asked, not listed


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_every_local_format_reads_the_same_rows(tmp_path: Path, suffix: str):
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        write_csv(path)
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        import datasets

        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    table = load_split(DataSpec(str(tmp_path)), "train")
    assert table["text"] == ["good movie", "bad food"] and table["label"] == ["positive", "negative"]
    assert load_split(DataSpec(str(path)), "train")["text"] == ["good movie", "bad food"]  # the file itself


def test_a_missing_split_names_what_was_found(tmp_path: Path):
    write_csv(tmp_path / "train.csv")
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(tmp_path)), "validation")
    msg = one_line(info.value)
    assert "split 'validation' not found" in msg and "(found ['train'])" in msg and "--split" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SkdError, match="found no split files"):
        load_split(DataSpec(str(empty)), "train")


def test_a_single_file_has_only_the_train_split(tmp_path: Path):
    f = write_csv(tmp_path / "rows.csv")
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(f)), "test")
    assert one_line(info.value) == "a single file has only the 'train' split; drop --split test"


def test_an_unknown_file_type_is_refused(tmp_path: Path):
    f = tmp_path / "rows.tsv"
    f.write_text("text\tlabel\n")
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(f)), "train")
    assert one_line(info.value) == f"cannot read {f}: use a .csv, .json, .jsonl or .parquet file"


def test_a_missing_local_path_is_refused_without_asking_the_hub(tmp_path: Path, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-data").mkdir()
    for source, hint in (
        ("./nowhere", ""),
        (str(tmp_path / "gone"), ""),
        ("a/b/c", ""),
        ("my-dat", " (did you mean my-data?)"),  # a typo of a folder here, not a hub name
    ):
        with pytest.raises(SkdError) as info:
            load_split(DataSpec(source), "train")
        assert one_line(info.value) == f"data path {source} does not exist{hint}; check --data"


def test_an_unreachable_hub_dataset_is_one_line(tmp_path: Path, monkeypatch):
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SkdError) as info:
        load_split(DataSpec("org/name", config_name="sub"), "validation")
    assert one_line(info.value) == (
        "cannot load hub dataset 'org/name' split 'validation' (ConnectionError); offline? pass a local directory "
        "of split files to --data"
    )
    assert calls == [(("org/name", "sub"), {"split": "validation"})]


def test_a_header_only_file_is_empty(tmp_path: Path):
    write_csv(tmp_path / "train.csv", rows=[])
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(tmp_path)), "train")
    msg = one_line(info.value)
    assert "split 'train'" in msg and "is empty; pick another --split or fill the file" in msg


def test_a_latin1_file_is_refused_with_the_fix(tmp_path: Path):
    (tmp_path / "train.csv").write_bytes("text,label\ncaf\xe9 cr\xe8me,positive\n".encode("latin-1"))
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(tmp_path)), "train")
    msg = one_line(info.value)
    assert "is not valid UTF-8; re-encode it (e.g. iconv -f latin1 -t utf-8)" in msg


def test_a_malformed_json_file_is_one_line(tmp_path: Path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(SkdError) as info:
        load_split(DataSpec(str(tmp_path)), "train")
    assert one_line(info.value).startswith(f"cannot read {tmp_path / 'train.jsonl'} as json")
