"""Reader: ragged offsets, random-access reads, dataset checks, incomplete / foreign / damaged caches."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_model, write_split

from skdcache import CacheError, DataSpec, TargetOptions, TeacherCache, TeacherSpec, load_rows, precompute

N_ROWS, BLOCK, MAX_LENGTH = 130, 32, 24


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """One data split and two caches of it: causal LM (top-k + all-token hidden), classifier (+ cls hidden)."""
    root = tmp_path_factory.mktemp("reader")
    data = root / "data"
    data.mkdir()
    write_split(data / "train.csv", N_ROWS, seed=31, pair=True)
    causal = make_model(root / "causal", "causal", seed=7)
    clf = make_model(root / "clf", "sequence", num_labels=3, seed=8)
    spec = DataSpec(str(data), text_pair_column="text2")
    base = dict(max_length=MAX_LENGTH, top_k=4, batch_size=16, rows_per_block=BLOCK, progress=False)
    lm_opts = TargetOptions(**base, hidden_layers="last", hidden_tokens="all")
    [lm] = precompute(spec, [TeacherSpec("lm", str(causal))], root / "c", lm_opts)
    [seq] = precompute(spec, [TeacherSpec("seq", str(clf))], root / "c", TargetOptions(**base, hidden_layers="1,2"))
    with open(data / "train.csv", newline="") as f:
        records = list(csv.DictReader(f))
    return {"data": data, "spec": spec, "lm": lm.path, "seq": seq.path, "causal": causal, "records": records}


def _copy(group: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(group, tmp_path / group.name))


def test_offsets_match_tokenized_lengths(built: dict):
    """token_index / hidden_index hold (start, count): counts are the tokenized lengths, blocks start on shards."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["causal"])
    lengths = np.array(
        [len(tok(r["text"], r["text2"], truncation=True, max_length=MAX_LENGTH)["input_ids"]) for r in built["records"]]
    )
    assert len(set(lengths.tolist())) > 5
    group = zarr.open_group(str(built["lm"]), mode="r")
    cache = TeacherCache(built["lm"])
    for index_name, member in (("token_index", "topk_logprobs"), ("hidden_index", "hidden")):
        index = group[index_name][:]
        shard = group[member].shards[0]
        assert index.dtype == np.int64 and index.shape == (N_ROWS, 2)
        assert (index[:, 1] == lengths).all()
        for b0 in range(0, N_ROWS, BLOCK):
            block = index[b0 : b0 + BLOCK]
            assert block[0, 0] % shard == 0
            assert (block[1:, 0] == block[:-1, 0] + block[:-1, 1]).all()
        assert group[member].shape[0] == index[-1].sum()
        # plain zarr, following the documented layout, reads the same as the reader
        for row in (0, 31, 32, 77, N_ROWS - 1):
            start, count = index[row]
            got = cache.read([row])
            want = group[member][start : start + count]
            if group.attrs["skdcache"]["layout"]["arrays"][member].get("coding") == "delta":  # as documented
                want = np.cumsum(want.view(np.uint16), axis=-1, dtype=np.uint16).view(np.float16)
            np.testing.assert_array_equal(getattr(got, member).numpy(), want.astype(np.float32))
    positions = zarr.open_group(str(built["lm"]), mode="r")["positions"]
    start, count = group["token_index"][5]
    assert positions[start : start + count].tolist() == list(range(lengths[5]))


@pytest.mark.parametrize("which", ["lm", "seq"])
def test_random_rows_with_repeats_equal_one_by_one(built: dict, which: str):
    """read(rows) in any order with repeats equals reading each row alone and concatenating."""
    cache = TeacherCache(built[which])
    rows = np.random.default_rng(5).choice(N_ROWS, size=50, replace=True)
    rows[10] = rows[3]
    rows[11] = N_ROWS - 1
    batch = cache.read(rows)
    singles = [cache.read([r]) for r in rows]
    fields = ["logits", "hidden"] if which == "seq" else ["topk_logprobs", "topk_ids", "tail_logmass", "positions"]
    fields += ["token_counts", "hidden_counts"] if which == "lm" else []
    if which == "lm":
        fields.append("hidden")
    for name in fields:
        got = getattr(batch, name)
        assert got is not None and got.shape[0] > 0, name
        assert torch.equal(got, torch.cat([getattr(s, name) for s in singles])), name
    if which == "seq":
        assert batch.logits.shape == (50, 3) and batch.hidden.shape == (50, 2, 32)
        assert batch.topk_ids is None and batch.hidden_counts is None
    else:
        assert batch.logits is None and batch.topk_ids.dtype == torch.int64


def test_edge_reads(built: dict, tmp_path: Path):
    """Empty reads return empty tensors; out-of-range rows raise IndexError; a missing cache raises CacheError."""
    cache = TeacherCache(built["lm"])
    empty = cache.read([])
    assert empty.topk_logprobs.shape == (0, 4) and empty.token_counts.shape == (0,)
    with pytest.raises(IndexError):
        cache.read([N_ROWS])
    with pytest.raises(IndexError):
        cache.read([-1])
    with pytest.raises(CacheError, match="precompute"):
        TeacherCache(tmp_path / "nothing")


def _rows_file(tmp_path: Path, records: list[dict], name: str) -> DataSpec:
    d = tmp_path / name
    d.mkdir()
    with open(d / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerows(records)
    return DataSpec(str(d), text_pair_column="text2")


def test_fingerprint_mismatch_raises(built: dict, tmp_path: Path):
    """The cache serves only its own rows: reordered or edited rows, or another row count, raise CacheError."""
    cache = TeacherCache(built["seq"])
    same = load_rows(_rows_file(tmp_path, built["records"], "same"))
    cache.check_dataset(same.fingerprint, len(same))
    assert cache.dataset_fingerprint == same.fingerprint
    reordered = load_rows(_rows_file(tmp_path, built["records"][::-1], "reordered"))
    edited_records = [dict(r) for r in built["records"]]
    edited_records[64]["text"] = "edited " + edited_records[64]["text"]
    edited = load_rows(_rows_file(tmp_path, edited_records, "edited"))
    for rows in (reordered, edited):
        with pytest.raises(CacheError, match="precompute it for this data"):
            cache.check_dataset(rows.fingerprint, len(rows))
    with pytest.raises(CacheError, match="rows"):
        cache.check_dataset(same.fingerprint, N_ROWS - 1)


def test_incomplete_cache_raises(built: dict, tmp_path: Path):
    """Without block 1's marker the cache refuses to open; allowed open serves only finished rows; verify says so."""
    group = _copy(built["lm"], tmp_path)
    (group / "_blocks" / "000001.json").unlink()
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(group)
    partial = TeacherCache(group, allow_incomplete=True)
    assert partial.read([0, BLOCK - 1, 2 * BLOCK]).token_counts.shape == (3,)
    with pytest.raises(CacheError, match="not written"):
        partial.read([0, BLOCK])
    assert partial.verify() == ["block 1: not written (no completion marker)"]


def test_other_format_version_raises(built: dict, tmp_path: Path):
    """A group whose manifest has another format_version is refused with a CacheError naming both versions."""
    group = _copy(built["seq"], tmp_path)
    meta = json.loads((group / "zarr.json").read_text())
    assert meta["attributes"]["skdcache"]["format_version"] == 1
    meta["attributes"]["skdcache"]["format_version"] = 7
    (group / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError) as err:
        TeacherCache(group)
    assert "v7" in str(err.value) and "v1" in str(err.value) and "\n" not in str(err.value)


def test_verify_reports_changed_and_unreadable_blocks(built: dict, tmp_path: Path):
    """verify() is empty for a healthy cache, names the block whose bytes changed, and reports a broken shard."""
    assert TeacherCache(built["lm"]).verify() == []
    group = _copy(built["lm"], tmp_path)
    arrays = zarr.open_group(str(group), mode="r+")
    start, count = arrays["token_index"][2 * BLOCK]
    arrays["tail_logmass"][start : start + count] = -1.0
    problems = TeacherCache(group).verify()
    assert len(problems) == 1 and problems[0].startswith("block 2 array tail_logmass: checksum"), problems

    shard = group / "hidden" / "c" / "0" / "0" / "0"
    assert shard.is_file()
    shard.write_bytes(shard.read_bytes()[:100])
    problems = TeacherCache(group).verify()
    assert any(p.startswith("block 0 array hidden") for p in problems), problems
    assert not any(p.startswith("block 1 ") for p in problems), problems
