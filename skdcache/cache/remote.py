"""Cache roots on shared storage: any fsspec URL (``s3://``, ``gs://``, ``memory://``; ``http(s)://`` read-only).

A complete teacher cache is immutable (its folder name is its content key), which keeps sharing simple:

- Readers mirror each group they need, whole, into a local directory and read it there with the fast local
  shard reader (training reads every row each epoch; per-chunk remote reads would be bound by latency).
- Writers precompute into that same local mirror (with its lock, resume and repair) and then publish: every
  data file first, the group's ``zarr.json`` (the manifest, state complete) last, and only once a listing shows
  every data file at its local size. Listings only show groups with a ``zarr.json``, so a publish that dies
  half-way is invisible and simply runs again.
- Two machines publishing the same teacher use the same key, and each object is one whole shard of one
  complete run, so even interleaved uploads leave a correct cache. No remote lock is needed.

Every remote call is bounded and retried (`transport`). Mirroring downloads into ``.<key>.download`` (kept when
interrupted, so the next fetch resumes it), checks sizes and block checksums, and only then renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from skdcache.cache import format as fmt
from skdcache.cache import transport
from skdcache.cache.manifest import READABLE_VERSIONS, Manifest, is_complete, manifest_attrs
from skdcache.cache.reader import group_problems
from skdcache.cache.selection import CacheEntry, select_teachers
from skdcache.cache.store import WriterLock, atomic_write, fsync_tree
from skdcache.cache.transport import READ_ONLY, TransferIncomplete
from skdcache.errors import CacheError

log = logging.getLogger("skdcache")
PUBLISH_ROUNDS = 3  # upload, list, re-upload what the listing lacks: more rounds would not fix a lying store
T = TypeVar("T")


def default_mirror(url: str) -> Path:
    """``$SKDCACHE_MIRROR/<hash of url>``, by default under ``~/.cache/skdcache/mirrors``."""
    base = os.environ.get("SKDCACHE_MIRROR") or Path.home() / ".cache" / "skdcache" / "mirrors"
    return Path(base) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteRoot:
    """A cache root at `url`, with its local mirror (a normal local cache root).

    `retry_s` bounds how long one operation (a listing, one file's transfer) may keep failing transiently, and
    `timeout_s` each request's connect and read time; by default ``$SKDCACHE_REMOTE_RETRY_S`` (60 s) and
    ``$SKDCACHE_REMOTE_TIMEOUT_S`` (20 s).
    """

    def __init__(
        self,
        url: str,
        mirror: str | Path | None = None,
        retry_s: float | None = None,
        timeout_s: float | None = None,
    ):
        import fsspec

        self.url = url.rstrip("/")
        self.retry_s = retry_s or transport.env_seconds(transport.RETRY_ENV, transport.DEFAULT_RETRY_S)
        self.timeout_s = timeout_s or transport.env_seconds(transport.TIMEOUT_ENV, transport.DEFAULT_TIMEOUT_S)
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **transport.client_options(self.url, self.timeout_s))
        except (ImportError, ValueError) as exc:
            raise CacheError(f"cannot open cache root {url}: {exc} (pip install 'skdcache[remote]')") from exc
        if hasattr(self.fs, "retries"):
            self.fs.retries = 1  # s3fs retries 5 times inside each call by default: that would multiply ours
        self.base = self.base.rstrip("/")
        self.mirror = Path(mirror) if mirror else default_mirror(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.read_only = any(p in READ_ONLY for p in protocols)

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        return transport.retry(self.url, what, call, self.retry_s)

    def _names(self, path: str) -> list[str]:
        """Child names; web-server listings may add sort links (``?C=N;O=D``) and parents, which are dropped."""
        try:
            listing = self._retry(f"listing {path}", lambda: self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        except CacheError:
            raise
        except Exception as exc:  # credentials, permissions, an unreachable endpoint: one line, not a traceback
            raise transport.refused(self.url, "list", exc) from exc
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in listing}
        return sorted(n for n in names if n and "?" not in n and "#" not in n and n not in (".", ".."))

    def check_readable(self) -> None:  # a bad URL or missing credentials: one line, before any data is loaded
        self._names(self.base)

    def _json(self, path: str) -> dict | None:
        """A small JSON file, or None when it is missing or is not JSON (e.g. an HTML page at that name)."""
        try:
            return json.loads(self._retry(f"reading {path}", lambda: self.fs.cat_file(path)))
        except (FileNotFoundError, ValueError):
            return None
        except CacheError:
            raise
        except Exception as exc:  # credentials, permissions: one line, as for listings
            raise transport.refused(self.url, "read", exc) from exc

    def _listing(self, prefix: str) -> dict[str, int | None]:
        """Every file below `prefix` (relative path -> size; None where the server does not say), fresh."""
        self.fs.invalidate_cache(prefix)
        try:
            found = self._retry(f"listing {prefix}", lambda: self.fs.find(prefix, detail=True))
        except FileNotFoundError:
            return {}
        out: dict[str, int | None] = {}
        for path, info in found.items():
            if info.get("type") == "directory" or path.rstrip("/") == prefix:
                continue
            size = info.get("size")
            out[transport.relative(path, prefix)] = int(size) if size is not None else None
        return out

    # ---- reading -------------------------------------------------------------------------------------------
    def manifests(self, fingerprint: str | None = None) -> list[tuple[str, dict, Manifest]]:
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
        path = self._path(fingerprint, key)
        return int(self._retry(f"sizing {path}", lambda: self.fs.du(path)))

    def has_complete(self, fingerprint: str, key: str) -> Manifest | None:
        """The manifest of a published group this version reads, or None (absent, partial, other format)."""
        path = self._path(fingerprint, key, "zarr.json")
        try:
            attrs = manifest_attrs(self._json(path) or {})
        except CacheError as exc:  # one damaged group must not hide the others from a listing
            log.warning("skipping %s: %s", path, exc)
            return None
        if attrs and attrs.get("format_version") in READABLE_VERSIONS and attrs.get("state") == "complete":
            return Manifest.from_dict(attrs)
        return None

    def fetch(self, fingerprint: str, key: str) -> Path:
        """The local mirror of one published group, downloaded whole unless a complete mirror exists.

        Holds the group's writer lock, so concurrent fetches (DDP ranks, several jobs) download it once and a
        local precompute of the same key is never overwritten. A complete local group of the same key is the
        same content (the key addresses it), so it is used as it is.
        """
        target = self.mirror / fingerprint / key
        with WriterLock(target, wait=True):
            if is_complete(target):
                return target
            return self._download(fingerprint, key, target)

    def _download(self, fingerprint: str, key: str, target: Path) -> Path:
        """Mirror into ``.<key>.download`` (resumed if an earlier fetch was cut), check it, rename it into place.

        Under the lock only one process writes that folder, so it needs no pid in its name and a later fetch
        finds what an interrupted one left: files at their listed size are kept, the rest is fetched.
        """
        prefix = self._path(fingerprint, key)
        name = f"{self.url}/{fingerprint[:12]}/{key[:12]}"

        def manifest_bytes() -> bytes:
            raw = self.fs.cat_file(f"{prefix}/zarr.json")
            try:
                json.loads(raw)
            except ValueError:
                raise TransferIncomplete(f"{prefix}/zarr.json arrived cut or damaged ({len(raw)} bytes)") from None
            return raw

        try:
            remote_meta = self._retry(f"reading {prefix}/zarr.json", manifest_bytes)
        except FileNotFoundError:
            raise CacheError(f"{name} is not published (no zarr.json); run `skdcache ls --cache {self.url}`") from None
        tmp = self.mirror / fingerprint / f".{key}.download"
        for _ in range(2):
            listing = self._listing(prefix)
            listing.pop("zarr.json", None)
            transport.drop_unlisted(tmp, listing)
            todo = sorted(rel for rel, size in listing.items() if not transport.has_size(tmp / rel, size))
            log.info("mirroring %s (%d of %d files to fetch) to %s", name, len(todo), len(listing), target)
            transport.each(todo, lambda rel, sizes=listing: self._get(f"{prefix}/{rel}", tmp / rel, sizes[rel]))
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "zarr.json").write_bytes(remote_meta)  # last, as on the remote
            problems = group_problems(tmp)
            if not problems:
                break
            log.warning("mirror of %s is damaged (%s); downloading it again", name, problems[0])
            shutil.rmtree(tmp)  # which file holds a damaged block is not known here: start over, once
        else:
            raise CacheError(
                f"{name} is damaged on the server ({problems[0]}): republish it "
                f"(`skdcache precompute --repair` where it was computed, then precompute --cache {self.url})"
            )
        dataset = self._retry(
            f"reading {fingerprint}/{fmt.DATASET_FILE}",
            lambda: self.fs.cat_file(self._path(fingerprint, fmt.DATASET_FILE)),
        )
        atomic_write(self.mirror / fingerprint / fmt.DATASET_FILE, dataset)
        fsync_tree(tmp)  # a power cut after the rename must not leave a "complete" mirror with missing bytes
        if target.exists():  # a partial local copy (a precompute that never finished): the remote one wins
            shutil.rmtree(target)
        tmp.rename(target)
        return target

    def _get(self, remote: str, local: Path, size: int | None) -> None:
        """One file, retried until it arrives whole (a cut body can leave a short file without an error)."""

        def once() -> None:
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))
            got = local.stat().st_size
            if size is not None and got != size:
                raise TransferIncomplete(f"{remote}: got {got} of {size} bytes")

        self._retry(f"downloading {remote}", once)

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
            self._retry("writing a probe object", lambda: self.fs.pipe_file(probe, b"ok"))
            self._retry("deleting a probe object", lambda: self.fs.rm_file(probe))
        except CacheError:
            raise
        except Exception as exc:
            raise transport.refused(self.url, "write to", exc) from exc

    def publish(self, group: Path) -> None:
        """Upload a complete local group: data files first, then dataset.json, then the group's zarr.json.

        ``zarr.json`` is written only once a fresh listing shows every data file at its local size (a reset
        after the server stored an object, or before, looks the same to the client), so a publish that fails
        leaves no visible group, only objects a later publish overwrites.
        """
        if self.read_only:
            raise CacheError(f"{self.url} is read-only: publish to an s3:// / gs:// root or a path")
        fingerprint, key = group.parent.name, group.name
        prefix = self._path(fingerprint, key)
        sizes = {
            p.relative_to(group).as_posix(): p.stat().st_size
            for p in sorted(group.rglob("*"))
            if p.is_file() and p != group / "zarr.json"
        }
        log.info("publishing %s (%d files) to %s", key[:12], len(sizes) + 1, self.url)

        def put(rel: str) -> None:
            self._retry(f"uploading {prefix}/{rel}", lambda: self.fs.put_file(str(group / rel), f"{prefix}/{rel}"))

        todo = sorted(sizes)
        for _ in range(PUBLISH_ROUNDS):
            transport.each(todo, put)
            listing = self._listing(prefix)
            todo = [rel for rel in sorted(sizes) if listing.get(rel) != sizes[rel]]
            if not todo:
                break
            log.warning(
                "%s: %d uploaded files are missing or short in the listing; uploading them again", key, len(todo)
            )
        else:
            raise CacheError(
                f"{self.url}: after {PUBLISH_ROUNDS} uploads, {len(todo)} files of {fingerprint[:12]}/{key[:12]} "
                f"(e.g. {todo[0]}) are still missing or the wrong size; nothing was published (no zarr.json): "
                "run again"
            )
        dataset = (group.parent / fmt.DATASET_FILE).read_bytes()
        self._retry(
            f"uploading {fmt.DATASET_FILE}",
            lambda: self.fs.pipe_file(self._path(fingerprint, fmt.DATASET_FILE), dataset),
        )
        manifest = (group / "zarr.json").read_bytes()
        self._retry(f"uploading {prefix}/zarr.json", lambda: self.fs.pipe_file(f"{prefix}/zarr.json", manifest))
