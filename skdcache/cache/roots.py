"""The one way to turn what a user typed for `--cache` into a cache root.

Every command and library entry point goes through `open_root`, so a path, `~/x`, `file:///x` and a remote
fsspec URL (s3://, gs://, http(s)://, memory://) mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skdcache.cache.remote import RemoteRoot, default_mirror
from skdcache.cache.store import default_cache_root

FILE_SCHEME = "file://"


def is_url(root: str | Path | None) -> bool:
    """True for ``scheme://...`` roots other than ``file://`` (which is just a local path)."""
    return isinstance(root, str) and "://" in root and not root.startswith(FILE_SCHEME)


@dataclass(frozen=True)
class CacheRoot:
    """A cache root: `path` is where its groups are read locally (for a URL, its local mirror)."""

    path: Path
    url: str | None = None  # set for remote roots only

    @property
    def is_remote(self) -> bool:
        return self.url is not None

    def remote(self) -> RemoteRoot:
        """The fsspec view of a remote root, mirroring into `path`."""
        if self.url is None:
            raise ValueError(f"{self.path} is a local cache root, not a URL")
        return RemoteRoot(self.url, self.path)

    def __str__(self) -> str:
        return self.url if self.url is not None else str(self.path)


def open_root(value: str | Path | CacheRoot | None) -> CacheRoot:
    """`value` as a cache root; None or "" is $SKDCACHE_HOME (default ~/.cache/skdcache)."""
    if isinstance(value, CacheRoot):
        return value
    if value is None or value == "":
        return CacheRoot(default_cache_root())
    if is_url(value):
        url = str(value).rstrip("/")
        return CacheRoot(default_mirror(url), url)
    text = str(value)
    if text.startswith(FILE_SCHEME):  # file:///abs -> /abs (a file URL is just a local path)
        text = text[len(FILE_SCHEME) :]
        if text.startswith("localhost/"):
            text = text[len("localhost") :]
    return CacheRoot(Path(text).expanduser())
