"""The HTTP server under `python -m embedding_api`: uvicorn, plus the guards uvicorn lacks.

uvicorn (httptools) has no limit on header size and no timeout before a request's headers are complete, and it keeps
a connection whose request body nobody reads for as long as the client trickles bytes. `guarded_protocol` adds:
- HEADER_TIMEOUT: from the connection's start (or a request's first byte on a kept-alive connection) to the end of
  its headers; then 408 in our error shape (or a silent close if nothing was sent) and the connection is closed;
- MAX_HEADER_BYTES: request line plus headers; past it 431 and close (checked after each read, so at most one read
  of 256 KiB more is buffered);
- MAX_CONNECTIONS: when a new connection would pass it, the connection that has waited longest for a request's
  headers (a slow client or an idle kept-alive one) is closed to make room; only when every connection is busy
  with a request is the new one refused with 503. A flood of slow connections thus cannot lock out fresh clients;
- after an early answer (401, 413, 429, ...) to a request whose body was not read, the rest of the body is read
  and dropped for at most LINGER_S, then the connection is closed: neither memory nor a connection is held by it.

The request body itself is bounded by the app (BODY_READ_TIMEOUT, MAX_REQUEST_BYTES, see routes.read_body).
`raise_fd_limit` lifts the soft RLIMIT_NOFILE to the hard one; `DrainingServer` bounds the shutdown by
SHUTDOWN_TIMEOUT.

One module on purpose: the guards share the protocol subclass and its per-connection state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from embedding_api.errors import ErrorKind, error_body
from embedding_api.service.runtime import Runtime
from embedding_api.settings import Settings

log = logging.getLogger(__name__)

FD_RESERVE = 256  # file descriptors kept for the model files, media downloads, logs and the loop itself
LINGER_S = 2.0
ANSWER_RESERVE_S = 1.0  # requests still running this long before the shutdown deadline are answered 503
WATCHDOG_TICK_S = 0.05


def _raw_response(kind: ErrorKind, message: str, status: int) -> bytes:
    body = orjson.dumps(error_body(kind, message))
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason.get(status, b"")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; (the soft limit found, the soft limit now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. macOS caps below an infinite hard limit
            return soft, soft
    return soft, max(soft, target)


def connection_cap(configured: int | None, fd_limit: int) -> int:
    """MAX_CONNECTIONS, or the file limit minus FD_RESERVE; never above that, so accept() cannot run out of files."""
    ceiling = max(16, fd_limit - FD_RESERVE)
    if configured is None:
        return ceiling
    if configured > ceiling:
        log.warning(
            "MAX_CONNECTIONS=%d is above the file limit %d minus %d; using %d",
            configured,
            fd_limit,
            FD_RESERVE,
            ceiling,
        )
        return ceiling
    return configured


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_header_bytes: int
    max_connections: int
    linger: float = LINGER_S


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap, a connection cap and lingering."""

    limits: ClassVar[ConnectionLimits]
    # Connections waiting for a request's headers (new, slow or idle kept-alive), oldest first: evicted first.
    waiting: ClassVar[dict[GuardedProtocol, None]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False
        self._header_size = 0  # the request line and headers, as parsed
        self._refused = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # ---- connection ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            message = "the server has too many open connections; retry shortly"
            transport.write(_raw_response(ErrorKind.TOO_MANY_CONNECTIONS, message, 503))
            self._close()
            return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        self._cancel_linger()
        super().connection_lost(exc)

    def _close(self) -> None:
        self._stop_head()
        self._cancel_linger()
        self.connections.discard(self)  # counted out now, not when the loop gets to connection_lost
        if not self.transport.is_closing():
            self.transport.close()

    def _evict_one(self) -> bool:
        for victim in self.waiting:
            if victim is not self:
                victim._close()
                return True
        return False

    # ---- the header phase ----------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self.waiting.pop(self, None)
        self.waiting[self] = None  # to the end: the most recently active
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _stop_head(self) -> None:
        self._in_head = False
        self.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            message = f"the request's headers did not arrive within HEADER_TIMEOUT={self.limits.header_timeout:g} s"
            self.transport.write(_raw_response(ErrorKind.REQUEST_TIMEOUT, message, 408))
        self._close()

    def _refuse_headers(self) -> None:
        self._refused = True
        message = f"the request line and headers are over MAX_HEADER_BYTES={self.limits.max_header_bytes}"
        self.transport.write(_raw_response(ErrorKind.HEADERS_TOO_LARGE, message, 431))
        self._close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._refused or self.transport.is_closing() or not self._in_head:
            return
        self._head_bytes += len(data)  # an endless header never completes: count what came while waiting for it
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_size = 0
        if not self._in_head:  # a request's first byte after an answered one (kept alive, or pipelined)
            self._start_head()

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._header_size > self.limits.max_header_bytes:  # headers that came whole in one read
            self._refuse_headers()
            return
        self._stop_head()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    # ---- after the answer ----------------------------------------------------------------------------------

    def on_message_complete(self) -> None:
        if self._refused:
            return
        lingering = self._linger_timer is not None
        self._cancel_linger()
        super().on_message_complete()
        if lingering and not self.transport.is_closing():  # the unread body is drained: idle as usual
            self._start_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.response_complete:
            return  # closed, or a pipelined request runs now
        if cycle.more_body:
            # Answered before its body was read: drop what still comes for a moment, then close.
            self._unset_keepalive_if_required()
            self._linger_timer = self.loop.call_later(self.limits.linger, self._close)
            return
        self._start_idle()

    def _start_idle(self) -> None:
        """Between requests: evictable, closed after uvicorn's keep-alive timeout unless a request begins."""
        self._in_head = False
        self.waiting.pop(self, None)
        self.waiting[self] = None
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _cancel_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A protocol class for one server (its own limits and its own list of waiting connections)."""
    return type("GuardedHttpProtocol", (GuardedProtocol,), {"limits": limits, "waiting": {}})


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: the runtime drains (503s, health 503), in-flight requests get until SHUTDOWN_TIMEOUT.

    Requests still running ANSWER_RESERVE_S before the deadline are answered 503 in our error shape and cancelled;
    a watchdog ends the process at the deadline whatever still runs (a forward pass cannot be interrupted).
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.shutdown_timeout = shutdown_timeout
        self.deadline: float | None = None  # time.monotonic() by which the process exits

    def run(self, sockets: Any = None) -> None:
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        super().run(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.deadline is None:  # only plain stores here: this runs in a signal handler
            self.deadline = time.monotonic() + self.shutdown_timeout
        self.runtime.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: Any = None) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.shutdown_timeout
        reserve = min(ANSWER_RESERVE_S, self.shutdown_timeout / 4)
        delay = max(0.0, self.deadline - reserve - time.monotonic())
        expiry = asyncio.get_running_loop().call_later(delay, self.runtime.expire_requests)
        try:
            await super().shutdown(sockets)
        finally:
            expiry.cancel()

    def _watchdog(self) -> None:
        while self.deadline is None or time.monotonic() < self.deadline:
            left = WATCHDOG_TICK_S if self.deadline is None else self.deadline - time.monotonic()
            time.sleep(min(WATCHDOG_TICK_S, max(0.0, left)))
        log.error(
            "SHUTDOWN_TIMEOUT=%g s ran out with work still running (a forward pass cannot be interrupted): exiting now",
            self.shutdown_timeout,
        )
        self.exit(1 if self.runtime.status == "error" else 0)

    @staticmethod
    def exit(code: int) -> None:
        """End the process now. The interpreter's own teardown is skipped: it waits for worker threads still in a
        job and garbage-collects the model (a second or more), with no watchdog left to bound it."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def build_server(app: Any, settings: Settings) -> DrainingServer:
    """The uvicorn server for `app`, with the file limit raised and the guards above."""
    found, fd_limit = raise_fd_limit()
    cap = connection_cap(settings.max_connections, fd_limit)
    if fd_limit > found:
        log.info("open-file limit raised from %d to %d", found, fd_limit)
    log.info("at most %d connections (open-file limit %d)", cap, fd_limit)
    limits = ConnectionLimits(settings.header_timeout, settings.max_header_bytes, cap)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(limits),
        log_level=settings.log_level,
        log_config=None,  # keep the handlers configure_logging installed (text or JSON)
        access_log=False,  # the app logs one line per request itself (with its request id)
        server_header=False,
        # A backstop only: DrainingServer answers and exits by SHUTDOWN_TIMEOUT itself.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout) + 1,
    )
    return DrainingServer(config, app.state.runtime, settings.shutdown_timeout)
