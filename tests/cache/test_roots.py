"""`open_root`: the one reading of `--cache` (path, ~, file:// URL, remote URL, default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skdcache.cache.remote import RemoteRoot, default_mirror
from skdcache.cache.roots import CacheRoot, open_root


def test_default_root_is_skdcache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SKDCACHE_HOME", str(tmp_path / "home"))
    for value in (None, ""):
        root = open_root(value)
        assert root == CacheRoot(tmp_path / "home") and not root.is_remote


@pytest.mark.parametrize("prefix", ["", "file://", "file://localhost"])
def test_local_paths_and_file_urls_are_the_same_root(prefix, tmp_path):
    root = open_root(f"{prefix}{tmp_path}/cache")
    assert root == CacheRoot(tmp_path / "cache") and str(root) == str(tmp_path / "cache")


def test_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_root("~/c").path == tmp_path / "c"
    assert open_root("file://~/c").path == tmp_path / "c"
    assert open_root(Path("~/c")).path == tmp_path / "c"


@pytest.mark.parametrize("url", ["s3://bucket/skd/", "https://example.org/skd", "memory://x"])
def test_urls_are_remote_with_their_mirror(url, monkeypatch, tmp_path):
    monkeypatch.setenv("SKDCACHE_MIRROR", str(tmp_path / "mirrors"))
    root = open_root(url)
    assert root.is_remote and root.url == url.rstrip("/") and str(root) == url.rstrip("/")
    assert root.path == default_mirror(url)
    if url.startswith("memory"):  # no network or credentials needed to build the fsspec view
        remote = root.remote()
        assert isinstance(remote, RemoteRoot) and remote.mirror == root.path


def test_open_root_is_idempotent_and_local_roots_have_no_remote(tmp_path):
    root = open_root(tmp_path)
    assert open_root(root) is root
    with pytest.raises(ValueError):
        root.remote()
