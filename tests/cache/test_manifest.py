"""The typed manifest: round trips, old manifests, the half-created group, and plain zarr clients."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from skdcache.cache import format as fmt
from skdcache.cache.manifest import (
    FORMAT_VERSION,
    MANIFEST_ATTR,
    DatasetInfo,
    Manifest,
    MetricInfo,
    TeacherInfo,
    read_manifest,
)
from skdcache.cache.markers import BLOCKS_DIR, completed_blocks
from skdcache.cache.reader import TeacherCache
from skdcache.cache.spec import TargetSpec
from skdcache.cache.writer import CacheWriter
from skdcache.errors import CacheError, GroupIncomplete

TEACHER = {
    "name": "t",
    "source": "./teachers/t",
    "revision": None,
    "head": "sequence",
    "weights_hash": "w",
    "num_parameters": 1000,
    "num_labels": 3,
    "vocab_size": 100,
    "hidden_size": 8,
    "num_hidden_layers": 2,
}
DATASET = {
    "fingerprint": "f" * 32,
    "n_rows": 100,
    "split": "train",
    "source": "data",
    "text_column": "text",
    "text_pair_column": None,
    "label_column": "label",
    "label_names": ["a", "b", "c"],
    "task": "classification",
    "limit": None,
}
METRIC = {"split": "validation", "name": "accuracy", "value": 0.5, "all": {"accuracy": 0.5}, "n_rows": 10}


def _manifest(**teacher) -> Manifest:
    spec = TargetSpec("sequence", 64)
    layout, _ = fmt.plan_layout(spec, DATASET["n_rows"], 3, None, None, None, None, rows_per_block=64)
    return Manifest(
        FORMAT_VERSION, {**TEACHER, **teacher}, "tok", DATASET, spec.to_dict(), layout.to_dict(), cache_key="k"
    )


def _write(path: Path, manifest: Manifest) -> Path:
    spec = TargetSpec.from_dict(manifest.targets)
    layout, index = fmt.plan_layout(spec, DATASET["n_rows"], 3, None, None, None, None, rows_per_block=64)
    writer = CacheWriter(path, manifest, layout, index)
    for b in range(layout.n_blocks):
        lo, hi = layout.block_rows(b)
        writer.write_block(b, {"logits": np.arange((hi - lo) * 3).reshape(-1, 3)})
    writer.finish(METRIC)
    return path


def test_typed_manifest_round_trip():
    m = _manifest(location="/abs/teachers/t").completed(METRIC, "2026-01-01T00:00:00+00:00")
    assert isinstance(m.teacher, TeacherInfo) and isinstance(m.dataset, DatasetInfo)
    assert isinstance(m.metric, MetricInfo) and m.metric.value == 0.5 and m.state == "complete"
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON
    assert Manifest.from_dict(d) == m
    assert d["teacher"] == {**TEACHER, "location": "/abs/teachers/t"} and d["dataset"] == DATASET
    assert m.teacher.location == "/abs/teachers/t" and m.dataset.label_names == ["a", "b", "c"]


def test_json_keys_and_order_are_todays():
    """Existing caches stay readable and rewritten manifests keep the keys (and order) older versions wrote."""
    d = _manifest().completed(METRIC, "now").to_dict()
    assert list(d) == [
        "format_version",
        "teacher",
        "tokenizer_hash",
        "dataset",
        "targets",
        "layout",
        "metric",
        "versions",
        "created_at",
        "completed_at",
        "state",
        "cache_key",
    ]
    assert list(d["teacher"]) == [*TEACHER, "location"]
    assert list(d["dataset"]) == list(DATASET)
    assert list(d["metric"]) == ["split", "name", "value", "all", "n_rows", "dataset_fingerprint"]


def test_manifest_without_location_is_read(tmp_path: Path):
    """A manifest written before `location` existed reads as location None, on disk and in memory."""
    group = _write(tmp_path / "g", _manifest())
    meta = json.loads((group / "zarr.json").read_text())
    del meta["attributes"][MANIFEST_ATTR]["teacher"]["location"]
    (group / "zarr.json").write_text(json.dumps(meta))
    m = read_manifest(group)
    assert m.teacher.location is None and m.teacher.name == "t" and m.teacher.num_labels == 3
    assert TeacherCache(group).read([0, 99]).logits.shape == (2, 3)


def test_unknown_keys_are_kept_and_bad_ones_named():
    d = _manifest().to_dict()
    d["teacher"]["added_later"] = 7
    m = Manifest.from_dict(d)
    assert m.teacher.extra == {"added_later": 7} and m.to_dict()["teacher"]["added_later"] == 7
    with pytest.raises(CacheError, match=r"lacks \['name'\]") as info:
        Manifest.from_dict({**d, "teacher": {"source": "x"}})
    assert "\n" not in str(info.value)
    with pytest.raises(CacheError, match="state 'done'"):
        Manifest.from_dict({**d, "state": "done"})
    with pytest.raises(CacheError, match="cache format v3"):
        Manifest.from_dict({**d, "format_version": 3})


def test_group_without_manifest_raises_group_incomplete(tmp_path: Path):
    """A kill between creating the group and writing its attributes: a named error, not message matching."""
    zarr.open_group(str(tmp_path / "g"), mode="w")
    with pytest.raises(GroupIncomplete, match="no 'skdcache' attribute"):
        read_manifest(tmp_path / "g")
    assert issubclass(GroupIncomplete, CacheError)


@pytest.mark.parametrize("doc", [{"attributes": True}, {"attributes": {"skdcache": [1]}}, [], 7])
def test_zarr_json_of_the_wrong_shape_is_damage_not_a_half_created_group(tmp_path: Path, doc):
    """Found by the 1,000-mutation metadata fuzz: `attributes: true` crashed `ls`/`verify`/`info`/`train`.
    It must be a named error, and not GroupIncomplete, which would make precompute recreate the group."""
    group = tmp_path / "g"
    group.mkdir()
    (group / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(CacheError, match="damaged") as info:
        read_manifest(group)
    assert not isinstance(info.value, GroupIncomplete) and str(group) in str(info.value)


@pytest.mark.parametrize("seed", [-1, 2**64, True])
def test_seeds_in_the_spec_must_be_what_numpy_accepts(seed):
    """A negative mask_seed reached numpy's SeedSequence in `train` as a traceback (metadata fuzz)."""
    spec = TargetSpec("mlm", 64, targets="topk", top_k=8, mlm_probability=0.15, mask_seed=0).to_dict()
    TargetSpec.from_dict(spec)
    with pytest.raises(CacheError, match="mask_seed"):
        TargetSpec.from_dict({**spec, "mask_seed": seed})


def test_plain_zarr_opens_a_cache_without_warnings(tmp_path: Path):
    group = _write(tmp_path / "g", _manifest())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = zarr.open_group(str(group), mode="r")
        members = dict(g.members(max_depth=None))
        assert np.array_equal(g["logits"][:2], [[0, 1, 2], [3, 4, 5]])
    assert {"logits", BLOCKS_DIR} <= set(members)
    assert completed_blocks(group) == {0, 1}


def test_cache_written_before_the_marker_node_is_read_and_resumed(tmp_path: Path):
    """Old caches have a plain `_blocks/` folder: they read as before, and resuming one adds the node."""
    manifest = _manifest()
    group = _write(tmp_path / "g", manifest)
    (group / BLOCKS_DIR / "zarr.json").unlink()
    assert TeacherCache(group).verify() == []
    spec = TargetSpec.from_dict(manifest.targets)
    layout, index = fmt.plan_layout(spec, DATASET["n_rows"], 3, None, None, None, None, rows_per_block=64)
    CacheWriter(group, manifest, layout, index)
    assert (group / BLOCKS_DIR / "zarr.json").exists() and completed_blocks(group) == {0, 1}
    assert TeacherCache(group).verify() == []


def test_precompute_records_the_teacher_location(tmp_path: Path, monkeypatch):
    """A teacher given as a relative path: `source` stays as typed, `location` is absolute; hub ids get None."""
    from conftest import make_model, write_split

    from skdcache import DataSpec, TargetOptions, TeacherSpec, precompute
    from skdcache.teacher.provenance import teacher_location

    make_model(tmp_path / "teachers" / "t", "sequence")
    (tmp_path / "data").mkdir()
    write_split(tmp_path / "data" / "train.csv", 20, seed=1)
    monkeypatch.chdir(tmp_path)
    opts = TargetOptions(max_length=16, batch_size=8, rows_per_block=16, progress=False, eval_split=None)
    [result] = precompute(DataSpec("data"), [TeacherSpec("t", "teachers/t")], tmp_path / "c", opts)
    teacher = read_manifest(result.path).teacher
    assert teacher.source == "teachers/t" and teacher.location == str((tmp_path / "teachers" / "t").resolve())
    assert result.manifest.teacher == teacher and teacher_location("org/hub-model") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(zarr.open_group(str(result.path), mode="r").array_keys()) == {"logits", BLOCKS_DIR}
