"""The guarded HTTP protocol (header deadline and size, connection cap, lingering) and the open-file limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from embedding_api.http.server import FD_RESERVE, ConnectionLimits, connection_cap, guarded_protocol, raise_fd_limit
from tests.conftest import free_port

LIMITS = ConnectionLimits(header_timeout=0.5, max_header_bytes=2048, max_connections=4, linger=0.5)


class App:
    """Answers 200 without reading the body; `/wait` answers only once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/wait":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Running:
    def __init__(self, limits: ConnectionLimits) -> None:
        self.app = App()
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, http=guarded_protocol(limits), lifespan="off", log_level="error"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def release(self) -> None:
        loop = self.server_loop
        loop.call_soon_threadsafe(self.app.release.set)

    @property
    def server_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        original = self.server.serve

        async def serve(sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await original(sockets)

        self.server.serve = serve  # type: ignore[method-assign]
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def running() -> Iterator[Running]:
    server = Running(LIMITS)
    server.start()
    yield server
    server.stop()


def read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, float]:
    """Everything until the server closes; seconds it took."""
    started = time.perf_counter()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.perf_counter() - started


def error(answer: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    return body


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_headers_slower_than_the_header_timeout_get_408(running: Running) -> None:
    sock = running.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and the blank line never comes
    answer, took = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
    assert error(answer)["code"] == "request_timeout" and "HEADER_TIMEOUT=0.5" in error(answer)["message"]
    assert 0.4 < took < 1.5


def test_a_silent_connection_is_closed_after_the_header_timeout(running: Running) -> None:
    answer, took = read_all(running.connect())
    assert answer == b"" and 0.4 < took < 1.5


def test_a_trickled_header_does_not_reset_the_deadline(running: Running) -> None:
    sock = running.connect()
    started = time.perf_counter()
    sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
    with pytest.raises(OSError):  # the server hangs up while bytes still trickle
        for _ in range(40):
            sock.sendall(b"a")
            time.sleep(0.05)
        raise OSError("never closed")
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize("pieces", [1, 20])
def test_headers_over_max_header_bytes_get_431(running: Running, pieces: int) -> None:
    sock = running.connect()
    header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    size = len(header) // pieces + 1
    with contextlib.suppress(OSError):  # the refusal may come before the last pieces are sent
        for start in range(0, len(header), size):
            sock.sendall(header[start : start + size])
    answer, took = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert error(answer)["code"] == "headers_too_large" and "MAX_HEADER_BYTES=2048" in error(answer)["message"]
    assert took < 0.4


def test_an_endless_header_is_cut_at_the_cap(running: Running) -> None:
    sock = running.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
    sent = 0
    with pytest.raises(OSError):
        while sent < 50_000_000:
            sock.sendall(b"a" * 1024)
            sent += 1024
            if sent % (64 * 1024) == 0:
                time.sleep(0.001)
    assert read_all(sock)[0].startswith(b"HTTP/1.1 431 ")
    assert sent < 10_000_000  # what the kernel's buffers took; the server itself read about 2 KiB


def test_kept_alive_requests_are_served_and_each_has_its_own_deadline(running: Running) -> None:
    sock = running.connect()
    for _ in range(3):
        sock.sendall(GET)
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.3)  # less than the header timeout each time, more in all
    sock.sendall(b"GET / HTTP/1.1\r\n")  # a second request whose headers stall
    answer, took = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and took < 1.5


def test_past_max_connections_the_longest_waiting_connection_makes_room(running: Running) -> None:
    idle = [running.connect() for _ in range(LIMITS.max_connections)]
    for sock in idle:  # one after the other: the first is the oldest
        sock.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.02)
    fresh = running.connect()
    fresh.sendall(GET)
    fresh.settimeout(5)
    assert fresh.recv(65536).startswith(b"HTTP/1.1 200 ")
    closed, _ = read_all(idle[0], timeout=0.3)
    assert closed == b""  # the oldest was closed to make room
    idle[-1].sendall(b"Host: x\r\n\r\n")  # the others are still served
    idle[-1].settimeout(5)
    assert idle[-1].recv(65536).startswith(b"HTTP/1.1 200 ")


def test_past_max_connections_with_every_connection_busy_the_new_one_gets_503(running: Running) -> None:
    busy = [running.connect() for _ in range(LIMITS.max_connections)]
    for sock in busy:
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    answer, _ = read_all(running.connect())
    assert answer.startswith(b"HTTP/1.1 503 ") and error(answer)["code"] == "too_many_connections"
    running.release()
    for sock in busy:
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_unread_body_is_dropped_for_a_moment_then_the_connection_closes(running: Running) -> None:
    sock = running.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"a" * 100_000)
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # answered without reading the body
    started = time.perf_counter()
    with pytest.raises(OSError):  # the client holds the rest of its body; the server hangs up
        while time.perf_counter() - started < 5:
            sock.sendall(b"a" * 1000)
            time.sleep(0.05)
    assert time.perf_counter() - started < LIMITS.linger + 1.0


def test_a_body_sent_in_full_after_an_early_answer_keeps_the_connection(running: Running) -> None:
    sock = running.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"hello" + GET)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("a hard open-file limit under 1,024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        found, now = raise_fd_limit()
        assert found == 512
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now > 512
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard))


def test_connection_cap_stays_below_the_file_limit() -> None:
    assert connection_cap(None, 1024) == 1024 - FD_RESERVE
    assert connection_cap(100, 1024) == 100
    assert connection_cap(5000, 1024) == 1024 - FD_RESERVE
    assert connection_cap(None, 100) == 16
