"""Cache roots on shared storage: any fsspec URL (``s3://``, ``gs://``, ``memory://``; ``http(s)://`` read-only).

A complete teacher cache is immutable (its folder name is its content key), which keeps sharing simple:

- Readers mirror each group they need, whole, into a local directory and read it there with the fast
  local shard reader: training reads every row each epoch, and per-chunk remote reads would be bound by
  latency. A mirror is reused as long as its manifest equals the remote one.
- Writers precompute into that same local mirror (with its lock, resume and repair) and then publish:
  every data file first, the group's ``zarr.json`` (which holds the manifest, state complete) last.
  Remote listings only show groups whose ``zarr.json`` exists, so a publish that dies half-way is
  invisible and simply runs again.
- Two machines publishing the same teacher use the same key, and each object is one whole shard of one
  complete run, so even interleaved uploads leave a correct cache. No remote lock is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from skdcache.cache import format as fmt
from skdcache.cache.manifest import read_manifest
from skdcache.cache.selection import CacheEntry, select_teachers
from skdcache.cache.store import WriterLock
from skdcache.errors import CacheError

log = logging.getLogger("skdcache")
READ_ONLY = ("http", "https")


def is_url(root: str | Path | None) -> bool:
    """True for ``scheme://...`` roots other than ``file://`` (which is just a local path)."""
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def default_mirror(url: str) -> Path:
    """``$SKDCACHE_MIRROR/<hash of url>``, by default under ``~/.cache/skdcache/mirrors``."""
    base = os.environ.get("SKDCACHE_MIRROR") or Path.home() / ".cache" / "skdcache" / "mirrors"
    return Path(base) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteRoot:
    """A cache root at `url`, with its local mirror (a normal local cache root)."""

    def __init__(self, url: str, mirror: str | Path | None = None):
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise CacheError(f"cannot open cache root {url}: {exc} (pip install 'skdcache[remote]')") from exc
        self.base = self.base.rstrip("/")
        self.mirror = Path(mirror) if mirror else default_mirror(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.read_only = any(p in READ_ONLY for p in protocols)

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _names(self, path: str) -> list[str]:
        """Child names; web-server listings may add sort links (``?C=N;O=D``) and parents, which are dropped."""
        try:
            listing = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # credentials, permissions, an unreachable endpoint: one line, not a traceback
            raise CacheError(
                f"cannot list {self.url}: {type(exc).__name__}: {exc} (check the URL and credentials, "
                "e.g. AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL)"
            ) from exc
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in listing}
        return sorted(n for n in names if n and "?" not in n and "#" not in n and n not in (".", ".."))

    def _json(self, path: str) -> dict | None:
        """A small JSON file, or None when it is missing or is not JSON (e.g. an HTML page at that name)."""
        try:
            return json.loads(self.fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return None

    # ---- reading -------------------------------------------------------------------------------------------
    def manifests(self, fingerprint: str | None = None) -> list[tuple[str, dict, fmt.Manifest]]:
        """(dataset fingerprint, dataset record, manifest) of every published group, optionally of one dataset."""
        self.fs.invalidate_cache()  # other machines publish: never trust a listing cached earlier
        out = []
        for fp in [fingerprint] if fingerprint else self._names(self.base):
            dataset = self._json(self._path(fp, fmt.DATASET_FILE))
            if dataset is None:
                continue
            for key in self._names(self._path(fp)):
                manifest = self.has_complete(fp, key)
                if manifest is not None:
                    out.append((fp, dataset, manifest))
        return out

    def stored_bytes(self, fingerprint: str, key: str) -> int:
        return int(self.fs.du(self._path(fingerprint, key)))

    def has_complete(self, fingerprint: str, key: str) -> fmt.Manifest | None:
        """The manifest of a published group this version reads, or None (absent, partial, other format)."""
        attrs = fmt.manifest_attrs(self._json(self._path(fingerprint, key, "zarr.json")) or {})
        if attrs and attrs.get("format_version") == fmt.FORMAT_VERSION and attrs.get("state") == "complete":
            return fmt.Manifest.from_dict(attrs)
        return None

    def fetch(self, fingerprint: str, key: str) -> Path:
        """The local mirror of one published group, downloaded whole unless a complete mirror exists.

        Holds the group's writer lock, so concurrent fetches (DDP ranks, several jobs) download it once and a
        local precompute of the same key is never overwritten. A complete local group of the same key is the
        same content (the key addresses it), so it is used as it is.
        """
        target = self.mirror / fingerprint / key
        with WriterLock(target, wait=True):
            if _complete_locally(target):
                return target
            return self._download(fingerprint, key, target)

    def _download(self, fingerprint: str, key: str, target: Path) -> Path:
        remote_meta = self.fs.cat_file(self._path(fingerprint, key, "zarr.json"))
        tmp = self.mirror / fingerprint / f".{key}.download-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = self._path(fingerprint, key)
        files = [f for f in self.fs.find(prefix) if f.rstrip("/") != prefix]
        sources = [f for f in files if _relative(f, prefix) != "zarr.json"]
        local = [str(tmp / _relative(f, prefix)) for f in sources]
        for path in local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        log.info("mirroring %s/%s/%s (%d files) to %s", self.url, fingerprint[:12], key[:12], len(files), target)
        if sources:
            self.fs.get(sources, local)
        (tmp / "zarr.json").write_bytes(remote_meta)  # last, as on the remote
        dataset = self.fs.cat_file(self._path(fingerprint, fmt.DATASET_FILE))
        (self.mirror / fingerprint / fmt.DATASET_FILE).write_bytes(dataset)
        if target.exists():  # a partial local copy (a precompute that never finished): the remote one wins
            shutil.rmtree(target)
        tmp.rename(target)
        return target

    def choose(self, fingerprint: str, names: list[str] | None) -> dict[str, str]:
        """Teacher name -> cache key among published groups, by the rule `catalog.find_teacher_caches` uses."""
        entries = [
            CacheEntry(self.mirror / fp / m.cache_key, dataset, m) for fp, dataset, m in self.manifests(fingerprint)
        ]
        return {name: path.name for name, path in select_teachers(entries, fingerprint, names, self.url).items()}

    # ---- writing -------------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Fail before hours of compute, not at publish time: write and delete a small probe object."""
        if self.read_only:
            raise CacheError(f"{self.url} is read-only: precompute to a path or an s3:// / gs:// root, then serve that")
        probe = self._path(f".skdcache-probe-{os.getpid()}")
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as exc:
            raise CacheError(
                f"cannot write to {self.url}: {type(exc).__name__}: {exc} (check the URL and "
                "credentials, e.g. AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL)"
            ) from exc

    def publish(self, group: Path) -> None:
        """Upload a complete local group: data files first, then dataset.json, then the group's zarr.json."""
        if self.read_only:
            raise CacheError(f"{self.url} is read-only: publish to an s3:// / gs:// root or a path")
        fingerprint, key = group.parent.name, group.name
        prefix = self._path(fingerprint, key)
        files = sorted(p for p in group.rglob("*") if p.is_file() and p != group / "zarr.json")
        log.info("publishing %s (%d files) to %s", key[:12], len(files) + 1, self.url)
        if files:
            self.fs.put([str(p) for p in files], [f"{prefix}/{p.relative_to(group).as_posix()}" for p in files])
        self.fs.pipe_file(self._path(fingerprint, fmt.DATASET_FILE), (group.parent / fmt.DATASET_FILE).read_bytes())
        self.fs.pipe_file(f"{prefix}/zarr.json", (group / "zarr.json").read_bytes())


def _complete_locally(group: Path) -> bool:
    try:
        return (group / "zarr.json").exists() and read_manifest(group).state == "complete"
    except CacheError:
        return False


def _relative(path: str, prefix: str) -> str:
    """`path` below `prefix`, for listings that return full URLs (http) or bucket paths (s3)."""
    path, prefix = path.rstrip("/"), prefix.rstrip("/")
    if "://" in path and "://" not in prefix:
        prefix = path[: path.index("://") + 3] + prefix.split("://", 1)[-1]
    if not path.startswith(prefix + "/"):
        raise CacheError(f"remote listing returned {path}, outside {prefix}")
    rel = path[len(prefix) + 1 :]
    if ".." in rel.split("/"):
        raise CacheError(f"remote file {path} escapes its cache group")
    return rel
