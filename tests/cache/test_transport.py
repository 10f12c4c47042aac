"""Surviving a failing object store, without a network: which errors are retried, the backoff and the time
budget (on a fake clock), parallel transfers that stop at the first error, and resumed download folders."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from skdcache.cache import transport
from skdcache.cache.transport import (
    BACKOFF_MAX_S,
    BACKOFF_S,
    RETRY_ENV,
    TransferIncomplete,
    client_options,
    drop_unlisted,
    each,
    env_seconds,
    has_size,
    is_transient,
    one_line,
    refused,
    relative,
    retry,
)
from skdcache.errors import CacheError, SkdError


class FakeClock:
    """time.monotonic / time.sleep for `transport`: sleeping advances the clock, nothing waits."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(transport, "time", fake)
    return fake


class Flaky:
    """A call that raises `errors` in turn, then returns `value`."""

    def __init__(self, errors: list[BaseException], value: object = "ok", clock: FakeClock | None = None, cost=0.0):
        self.errors, self.value, self.calls = list(errors), value, 0
        self.clock, self.cost = clock, cost

    def __call__(self):
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost  # each attempt takes this long (a stalled request timing out)
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def network_error(name: str, module: str = "aiohttp.client_exceptions", status: int | None = None):
    """An exception class as a network library defines it (only its module and status are looked at)."""
    cls = type(name, (Exception,), {"__module__": module})
    exc = cls(f"{name} happened")
    if status is not None:
        exc.status = status
    return exc


# ---- which errors are worth retrying -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("read timed out"),
        OSError(errno.EBUSY, "503 Slow Down"),  # s3fs's mapping of 503
        OSError(errno.EREMOTEIO, "500 Internal Error"),
        OSError("no errno at all"),
        TransferIncomplete("got 10 of 20 bytes"),
        network_error("ServerDisconnectedError"),
        network_error("ClientResponseError", status=503),
        network_error("ClientResponseError", status=429),  # throttled
        network_error("ClientResponseError", status=408),
        network_error("ReadTimeoutError", module="urllib3.exceptions"),
        network_error("EndpointConnectionError", module="botocore.exceptions"),
    ],
)
def test_transient_errors(exc: BaseException):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError(errno.ENOENT, "no such key"),
        PermissionError(errno.EACCES, "access denied"),
        FileExistsError(errno.EEXIST, "exists"),
        IsADirectoryError(errno.EISDIR, "is a directory"),
        OSError(errno.EINVAL, "bad request"),
        OSError(errno.EROFS, "read-only"),
        OSError(errno.ENOSPC, "disk full"),  # our disk, not the network
        CacheError("our own refusal"),
        network_error("NoCredentialsError", module="botocore.exceptions"),
        network_error("ClientResponseError", status=403),
        network_error("ClientResponseError", status=404),
        ValueError("a bug"),  # a bug retried is still a bug
        KeyError("x"),
        network_error("ClientResponseError", module="mylib", status=503),  # not a network library
    ],
)
def test_permanent_errors(exc: BaseException):
    assert not is_transient(exc)


# ---- retry -------------------------------------------------------------------------------------------------------
def test_retry_returns_at_once_when_the_call_succeeds(clock: FakeClock):
    call = Flaky([])
    assert retry("s3://b/k", "list", call, retry_s=60) == "ok"
    assert call.calls == 1 and clock.sleeps == []


def test_retry_survives_transient_failures_with_exponential_backoff(clock: FakeClock):
    call = Flaky([ConnectionResetError("reset")] * 6, value=42)
    assert retry("s3://b/k", "get", call, retry_s=1000) == 42
    assert call.calls == 7 and len(clock.sleeps) == 6
    for attempt, delay in enumerate(clock.sleeps, start=1):
        cap = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1))
        assert 0.5 * cap <= delay <= cap, (attempt, delay)  # jittered in [cap/2, cap]
    assert clock.sleeps[-1] > clock.sleeps[0]  # it backs off


def test_retry_waits_at_most_the_longest_backoff(clock: FakeClock):
    call = Flaky([TimeoutError("slow")] * 20)
    assert retry("u", "get", call, retry_s=10**6) == "ok"
    assert max(clock.sleeps) <= BACKOFF_MAX_S and clock.sleeps[-1] >= 0.5 * BACKOFF_MAX_S


def test_a_permanent_error_is_raised_as_it_is_without_retrying(clock: FakeClock):
    missing = FileNotFoundError(errno.ENOENT, "no such key")
    call = Flaky([missing])
    with pytest.raises(FileNotFoundError) as info:
        retry("s3://b/k", "get", call, retry_s=60)
    assert info.value is missing and call.calls == 1 and clock.sleeps == []
    call = Flaky([ConnectionResetError("reset"), ValueError("bug")])
    with pytest.raises(ValueError):
        retry("s3://b/k", "get", call, retry_s=60)
    assert call.calls == 2


def test_retry_gives_up_within_its_budget_in_one_line(clock: FakeClock):
    # each attempt stalls for the request timeout (4 s) before failing
    call = Flaky([TimeoutError(f"stalled\n {i}") for i in range(1000)], clock=clock, cost=4.0)
    start = clock.now
    with pytest.raises(CacheError) as info:
        retry("s3://bucket/cache/fp/key", "download", call, retry_s=30)
    spent = clock.now - start
    assert spent <= 30 + call.cost  # never sleeps past the budget; the last attempt may overrun by its own length
    assert sum(clock.sleeps) + call.cost * call.calls == pytest.approx(spent)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"s3://bucket/cache/fp/key: download failed {call.calls} times in ")
    assert f"(last: TimeoutError: stalled {call.calls - 1})" in msg  # the last error, on the same line
    assert f"{RETRY_ENV}=<seconds> (now 30)" in msg and "AWS_ENDPOINT_URL" in msg
    assert isinstance(info.value.__cause__, TimeoutError)


def test_a_zero_budget_still_tries_once(clock: FakeClock):
    call = Flaky([ConnectionResetError("reset")])
    with pytest.raises(CacheError, match="failed 1 times"):
        retry("u", "list", call, retry_s=0)
    assert call.calls == 1 and clock.sleeps == []


# ---- settings from the environment -------------------------------------------------------------------------
def test_env_seconds(monkeypatch):
    monkeypatch.delenv("SKD_TEST_S", raising=False)
    assert env_seconds("SKD_TEST_S", 60.0) == 60.0
    monkeypatch.setenv("SKD_TEST_S", "")
    assert env_seconds("SKD_TEST_S", 60.0) == 60.0
    monkeypatch.setenv("SKD_TEST_S", "2.5")
    assert env_seconds("SKD_TEST_S", 60.0) == 2.5
    for raw, why in (("ten", "is not a number of seconds"), ("0", "must be a positive"), ("-3", "must be a positive")):
        monkeypatch.setenv("SKD_TEST_S", raw)
        with pytest.raises(CacheError, match=why) as info:
            env_seconds("SKD_TEST_S", 60.0)
        assert f"SKD_TEST_S={raw!r}" in str(info.value)


def test_env_seconds_refuses_nan(monkeypatch):
    """NaN is no positive number: as a retry budget, `elapsed + delay > nan` is never true, so retry() would
    retry a dead endpoint forever instead of giving up."""
    monkeypatch.setenv("SKD_TEST_S", "nan")
    with pytest.raises(SkdError, match="must be a positive"):
        env_seconds("SKD_TEST_S", 60.0)


def test_client_options_bound_timeouts_and_turn_off_client_retries():
    s3 = client_options("s3://bucket/cache", 7.0)
    assert s3["skip_instance_cache"] is True
    assert s3["config_kwargs"] == {"connect_timeout": 7.0, "read_timeout": 7.0, "retries": {"max_attempts": 1}}
    assert client_options("s3a://bucket/cache", 7.0) == s3
    timeout = client_options("https://host/cache", 7.0)["client_kwargs"]["timeout"]
    assert (timeout.total, timeout.sock_connect, timeout.sock_read) == (None, 7.0, 7.0)
    assert client_options("http://host/cache", 3.0)["client_kwargs"]["timeout"].sock_read == 3.0
    assert client_options("file:///tmp/cache", 7.0) == {}
    assert client_options("memory://cache", 7.0) == {}


# ---- parallel transfers ------------------------------------------------------------------------------------------
def test_each_does_every_item_once():
    done: list[str] = []
    lock = threading.Lock()

    def work(item: str) -> None:
        with lock:
            done.append(item)

    items = [f"f{i}" for i in range(37)]
    each(iter(items), work)  # any iterable
    assert sorted(done) == sorted(items)
    each([], work)
    assert len(done) == 37


def test_each_stops_at_the_first_error(monkeypatch):
    """Two threads: one is held, the other fails; what has not started is cancelled, the error is raised."""
    gate = threading.Event()
    started: list[str] = []

    class Pool(transport.ThreadPoolExecutor):
        def shutdown(self, *args, **kwargs):  # each() has cancelled and is raising: let the held work end
            gate.set()
            return super().shutdown(*args, **kwargs)

    monkeypatch.setattr(transport, "TRANSFER_THREADS", 2)
    monkeypatch.setattr(transport, "ThreadPoolExecutor", Pool)

    def work(item: str) -> None:
        started.append(item)
        if item == "bad":
            raise ConnectionResetError("reset")
        assert gate.wait(30)

    items = ["hold", "bad", *(f"x{i}" for i in range(10))]
    with pytest.raises(ConnectionResetError):
        each(items, work)
    assert started[:2] == ["hold", "bad"]
    assert set(started[2:]) <= {"x0"}  # at most the one the failed thread picked up before the cancel


# ---- resumed downloads and listings ------------------------------------------------------------------------------
def test_has_size(tmp_path: Path):
    f = tmp_path / "shard"
    assert not has_size(f, None) and not has_size(f, 0)
    f.write_bytes(b"12345")
    assert has_size(f, 5) and has_size(f, None)
    assert not has_size(f, 4) and not has_size(f, 6)  # a cut download is fetched again
    assert not has_size(tmp_path, None)  # a folder is not a file


def test_drop_unlisted(tmp_path: Path):
    folder = tmp_path / "group"
    for rel in ("zarr.json", "logits/c/0/0", "logits/c/1/0", "logits/zarr.json", "_blocks/000000.json", "stray"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("x")
    drop_unlisted(folder, {"zarr.json": 1, "logits/c/0/0": None, "logits/zarr.json": 1, "_blocks/000000.json": 9})
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert left == ["_blocks/000000.json", "logits/c/0/0", "logits/zarr.json", "zarr.json"]
    drop_unlisted(tmp_path / "absent", {})  # nothing downloaded yet


@pytest.mark.parametrize(
    ("path", "prefix", "rel"),
    [
        ("bucket/cache/fp/key/zarr.json", "bucket/cache/fp/key", "zarr.json"),
        ("bucket/cache/fp/key/logits/c/0/0", "bucket/cache/fp/key/", "logits/c/0/0"),
        ("https://host/cache/fp/key/zarr.json", "host/cache/fp/key", "zarr.json"),
        ("https://host/cache/fp/key/zarr.json", "https://host/cache/fp/key", "zarr.json"),
        ("bucket/cache/fp/key/_blocks/", "bucket/cache/fp/key", "_blocks"),
    ],
)
def test_relative(path: str, prefix: str, rel: str):
    assert relative(path, prefix) == rel


@pytest.mark.parametrize(
    ("path", "prefix", "why"),
    [
        ("bucket/cache/fp/other/zarr.json", "bucket/cache/fp/key", "outside"),
        ("bucket/cache/fp/keyX/zarr.json", "bucket/cache/fp/key", "outside"),  # a sibling sharing the prefix
        ("bucket/cache/fp/key", "bucket/cache/fp/key", "outside"),
        ("bucket/cache/fp/key/../../x", "bucket/cache/fp/key", "escapes its cache group"),
    ],
)
def test_relative_refuses_files_outside_the_group(path: str, prefix: str, why: str):
    with pytest.raises(CacheError, match=why):
        relative(path, prefix)


def test_one_line_and_refused():
    assert one_line(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(ValueError("x" * 500)) == "ValueError: " + "x" * 200
    exc = PermissionError("Access Denied\n<Error><Code>AccessDenied</Code></Error>")
    err = refused("s3://bucket/cache", "list", exc)
    assert isinstance(err, CacheError) and "\n" not in str(err)
    assert str(err).startswith("cannot list s3://bucket/cache: PermissionError: Access Denied (check the URL")
    assert "AWS_ACCESS_KEY_ID" in str(err)
    assert str(refused("u", "read", PermissionError())).startswith("cannot read u: PermissionError:  (check")
