"""catalog functions behind `ls`, `info` and `verify`, on any root (path, file:// URL, memory:// URL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_model, write_split

from skdcache.cache.catalog import cache_info, list_root, verify_any_root
from skdcache.cache.remote import RemoteRoot
from skdcache.data.rows import DataSpec
from skdcache.errors import CacheError
from skdcache.precompute import precompute
from skdcache.teacher.load import TeacherSpec
from skdcache.teacher.options import TargetOptions


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("catalog")
    (tmp / "data").mkdir()
    write_split(tmp / "data" / "train.csv", 40, seed=1)
    teacher = make_model(tmp / "t", "sequence")
    opts = TargetOptions(max_length=24, rows_per_block=16, eval_split=None, progress=False)
    precompute(DataSpec(str(tmp / "data")), [TeacherSpec("t", str(teacher))], tmp / "cache", opts)
    return tmp / "cache"


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_list_verify_info_on_paths_and_file_urls(root, prefix):
    (entry,) = list_root(f"{prefix}{root}")
    assert entry.name == "t" and entry.manifest.state == "complete"
    assert verify_any_root(f"{prefix}{root}") == {entry.path: []}
    info = cache_info(f"{prefix}{entry.path}")
    assert info.fields()["state"] == "complete" and info.table()[0]["array"]
    assert info.total().endswith("B/example") and info.to_dict()["manifest"]["cache_key"] == entry.path.name


def test_memory_url_lists_published_groups(root, monkeypatch, tmp_path):
    monkeypatch.setenv("SKDCACHE_MIRROR", str(tmp_path / "mirror"))
    url = "memory://catalog-test"
    (local,) = list_root(root)
    RemoteRoot(url).publish(local.path)
    (entry,) = list_root(url)
    assert entry.name == "t" and entry.stored_bytes and entry.stored_bytes > 0
    report = verify_any_root(url, ["t"])
    assert list(report.values()) == [[]] and next(iter(report)).is_relative_to(tmp_path / "mirror")


def test_info_refuses_urls_and_missing_folders(tmp_path):
    with pytest.raises(CacheError, match="local teacher cache"):
        cache_info("s3://bucket/x")
    with pytest.raises(CacheError, match="not a directory"):
        cache_info(tmp_path / "nope")
