"""Talking to an object store that fails: bounded timeouts, retries with backoff, parallel whole-file transfers.

`remote.RemoteRoot` decides *what* to list, upload and download; this module decides how one call survives
resets, 500/503 answers, stalls and cut bodies, and how a resumed download folder is reconciled with a listing.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TypeVar

from skdcache.errors import CacheError

log = logging.getLogger("skdcache")
READ_ONLY = ("http", "https")
RETRY_ENV = "SKDCACHE_REMOTE_RETRY_S"  # how long one remote operation may keep failing before we give up
TIMEOUT_ENV = "SKDCACHE_REMOTE_TIMEOUT_S"  # connect and read timeout of each request
DEFAULT_RETRY_S = 60.0
DEFAULT_TIMEOUT_S = 20.0
BACKOFF_S, BACKOFF_MAX_S = 0.2, 5.0  # first wait, longest wait (doubling in between, with jitter)
TRANSFER_THREADS = 8  # files in flight at once: per-object latency, not bandwidth, bounds small shards
NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "s3fs", "fsspec", "gcsfs", "asyncio", "requests")
PERMANENT_ERRNOS = {errno.EINVAL, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EEXIST, errno.EROFS, errno.ENOSPC}
T = TypeVar("T")


class TransferIncomplete(ConnectionError):
    """A file arrived (or was listed) at another size than expected: a cut connection, retried like one."""


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable `name`, else `default`."""
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise CacheError(f"{name}={raw!r} is not a number of seconds") from None
    if not value > 0:  # NaN too: a NaN retry budget never runs out
        raise CacheError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def client_options(url: str, timeout_s: float) -> dict:
    """Bounded timeouts and no hidden client-side retries (we retry, within our time budget), per protocol.

    s3fs instances are not shared (fsspec caches them by arguments, not by ``AWS_ENDPOINT_URL``), so a root
    always talks to the endpoint the environment names now.
    """
    protocol = url.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        config = {"connect_timeout": timeout_s, "read_timeout": timeout_s, "retries": {"max_attempts": 1}}
        return {"skip_instance_cache": True, "config_kwargs": config}
    if protocol in READ_ONLY:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        return {"client_kwargs": {"timeout": timeout}}
    return {}


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: resets, timeouts, 5xx/throttling, cut bodies. Not: missing files, refused credentials,
    bad requests, our own errors, or anything that is not a network failure (a bug retried is still a bug)."""
    if isinstance(exc, CacheError | FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError):
        return False
    if "Credentials" in type(exc).__name__:
        return False
    status = getattr(exc, "status", None)  # aiohttp's HTTP errors (http:// roots)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False
    if isinstance(exc, OSError):  # s3fs turns S3 errors into OSErrors: 500 -> EREMOTEIO, 503 -> EBUSY, ...
        return exc.errno not in PERMANENT_ERRNOS
    return type(exc).__module__.split(".")[0] in NETWORK_MODULES or isinstance(exc, TimeoutError)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def retry(url: str, what: str, call: Callable[[], T], retry_s: float) -> T:
    """`call()`, retried on transient errors with exponential backoff for at most `retry_s` seconds; then
    one `CacheError` line naming the URL, the operation and the last error. Other errors pass through."""
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            elapsed = time.monotonic() - start
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if elapsed + delay > retry_s:
                raise CacheError(
                    f"{url}: {what} failed {attempt} times in {elapsed:.0f} s (last: {one_line(exc)}); "
                    f"the object store is unreachable or failing: check the endpoint and credentials "
                    f"(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID) and run again, or retry longer with "
                    f"{RETRY_ENV}=<seconds> (now {retry_s:g})"
                ) from exc
            log.debug("%s: %s failed (%s); retry %d in %.1f s", url, what, one_line(exc), attempt, delay)
            time.sleep(delay)


def each(items: Iterable[str], work: Callable[[str], None]) -> None:
    """`work(item)` for every item on a few threads; the first error cancels what has not started."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(min(TRANSFER_THREADS, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def has_size(path: Path, size: int | None) -> bool:
    """A mirrored file kept on resume: present at its listed size (any size where the server does not say;
    the group's checksums then check the bytes)."""
    try:
        return path.is_file() and (size is None or path.stat().st_size == size)
    except OSError:
        return False


def drop_unlisted(folder: Path, listing: dict[str, int | None]) -> None:
    """Delete files a resumed download folder holds that the remote group does not (zarr.json comes last)."""
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in listing:
            path.unlink()


def relative(path: str, prefix: str) -> str:
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


def refused(url: str, verb: str, exc: BaseException) -> CacheError:
    """One line for a request the store refused (credentials, permissions, a wrong URL), naming what to check."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CacheError(
        f"cannot {verb} {url}: {type(exc).__name__}: {first} (check the URL and credentials, "
        "e.g. AWS_ACCESS_KEY_ID / AWS_ENDPOINT_URL)"
    )
