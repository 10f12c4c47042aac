"""A fault-injecting HTTP proxy for an S3 endpoint: it sits between s3fs and the server and, per request with a
seeded probability, answers with a fault instead of (or after) relaying the request.

    with FaultyProxy("127.0.0.1:9000", rate=0.2, seed=1) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
        print(proxy.injected)   # Counter of faults by kind

Faults (`KINDS`):

- ``reset``: the connection is closed without an answer (an RST), sometimes after the request reached the server
  (so the operation happened but the client never hears of it).
- ``http_500`` / ``http_503``: an S3-style XML error (``InternalError`` / ``SlowDown``); the server never sees it.
- ``timeout``: the connection is held, unanswered, until the client gives up (or `hold_s` passes).
- ``truncate``: a GET's answer with its correct Content-Length, but the connection closes half-way through the body.

A request drawn for ``truncate`` that has no body to cut (a PUT, a HEAD, an empty object) is relayed unharmed and
not counted. SigV4 signatures are not checked by moto, so requests are relayed byte for byte.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

KINDS = ("reset", "http_500", "http_503", "timeout", "truncate")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
ERRORS = {
    "http_500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "http_503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


class FaultyProxy:
    """A threaded proxy to `upstream` (``host:port``) that injects faults at `rate` (0..1, changeable live)."""

    def __init__(
        self, upstream: str, rate: float = 0.1, seed: int = 0, kinds: tuple[str, ...] = KINDS, hold_s: float = 10.0
    ):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.kinds = tuple(kinds)
        self.hold_s = hold_s  # a held connection is dropped after this, or as soon as the client hangs up
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def draw(self) -> str | None:
        """The fault for the next request, or None (seeded; one draw per request)."""
        with self._lock:
            self.requests += 1
            if self.rng.random() >= self.rate:
                return None
            return self.rng.choice(self.kinds)

    def coin(self) -> bool:
        with self._lock:
            return self.rng.random() < 0.5

    def record(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1


class _Handler(http.server.BaseHTTPRequestHandler):
    proxy: FaultyProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as s3fs's connection pool expects

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._relay()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _relay(self) -> None:
        body = self._read_body()
        kind = self.proxy.draw()
        if kind == "reset" and self.proxy.coin():  # before the server saw it
            return self._reset()
        if kind in ERRORS:
            return self._error(kind)
        if kind == "timeout":
            return self._hold()
        try:
            status, reason, headers, data = self._forward(body)
        except OSError:
            return self._reset()  # the server itself is gone: the client sees a reset, not counted
        if kind == "reset":  # after the server did it: the client never hears
            return self._reset()
        if kind == "truncate" and self.command == "GET" and len(data) >= 2:
            self._answer(status, reason, headers, data, cut=len(data) // 2)
            self.proxy.record("truncate")
            self.close_connection = True
            return
        self._answer(status, reason, headers, data)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes, cut: int | None = None):
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            low = name.lower()
            if low in HOP_BY_HOP or (low == "content-length" and self.command != "HEAD"):
                continue
            lines.append(f"{name}: {value}")
        if self.command != "HEAD":
            lines.append(f"Content-Length: {len(data)}")  # the full length, even when the body is cut
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if self.command != "HEAD":
            self.wfile.write(data if cut is None else data[:cut])
        self.wfile.flush()

    def _error(self, kind: str) -> None:
        status, reason, code, message = ERRORS[kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faulty-proxy</RequestId></Error>"
        ).encode()
        self._answer(status, reason, [("Content-Type", "application/xml")], b"" if self.command == "HEAD" else body)
        self.proxy.record(kind)

    def _reset(self) -> None:
        """Close without an answer; linger 0 makes the close an RST, as a crashed server or a middlebox would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.proxy.record("reset")

    def _hold(self) -> None:
        """Say nothing until the client hangs up (its read timeout), the hold ends, or the proxy stops."""
        self.proxy.record("timeout")
        deadline = time.monotonic() + self.proxy.hold_s
        while time.monotonic() < deadline and not self.proxy._stop.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break  # the client closed its end
                except OSError:
                    break
        self.close_connection = True


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields ``host:port``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def s3_environment(endpoint_url: str) -> Iterator[None]:
    """Dummy credentials and `endpoint_url` in the environment (how skdcache finds an S3 endpoint), restored after."""
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint_url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def direct_fs(endpoint: str):
    """An s3fs client straight to the server (``host:port``), past the proxy: the ground truth of what is stored."""
    import s3fs

    return s3fs.S3FileSystem(
        key="test",
        secret="test",
        skip_instance_cache=True,
        use_listings_cache=False,
        client_kwargs={"endpoint_url": f"http://{endpoint}"},
    )
