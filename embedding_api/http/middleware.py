"""The middleware: request id, timing, route labels, metrics and the log line for every request (outermost), and the
list of requests in progress that a shutdown deadline cancels."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_api.errors import ErrorKind, error_body
from embedding_api.http.encoding import json_response
from embedding_api.observability.logs import (
    REQUEST_ID_HEADER,
    RequestRecord,
    current_request,
    log_request,
    request_id_from,
    safe_traceback,
)
from embedding_api.observability.metrics import UNMATCHED_ROUTE, Metrics
from embedding_api.service.runtime import Runtime

log = logging.getLogger(__name__)


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Routes with a path, through included routers (FastAPI wraps them) and mounts."""
    for route in routes:
        inner = getattr(route, "original_router", route)
        nested = getattr(inner, "routes", None)
        if nested is not None and not isinstance(getattr(route, "path", None), str):
            yield from _leaf_routes(nested)
        else:
            yield route


def route_template(app: ASGIApp, scope: Scope) -> str:
    """The matched route's path template (never the raw path, so labels stay few)."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Not routed (refused by the auth middleware, say): match the templates here.
    partial = None
    for route in _leaf_routes(getattr(getattr(app, "router", None), "routes", ())):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(route.path)
        if match is Match.PARTIAL and partial is None:
            partial = str(route.path)
    return partial or UNMATCHED_ROUTE


class ObservingMiddleware:
    """Outermost: request id (kept or made, echoed on every answer), timing, route labels, metrics, the log line.

    Unexpected exceptions end here: logged without their message, answered 500 in the OpenAI shape.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, router_app: ASGIApp) -> None:
        self.app = app
        self.metrics = metrics
        self.router_app = router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((value for key, value in scope["headers"] if key.lower() == b"x-request-id"), None)
        record = RequestRecord(
            request_id=request_id_from(incoming.decode("latin-1") if incoming else None), method=scope["method"]
        )
        token = current_request.set(record)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                record.status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((REQUEST_ID_HEADER.lower().encode(), record.request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(
                "unhandled error (request_id=%s): %s\n%s",
                record.request_id,
                type(exc).__name__,
                safe_traceback((type(exc), exc, exc.__traceback__)),
            )
            if not started:
                response = json_response(error_body(ErrorKind.INTERNAL, "internal error"), 500)
                await response(scope, receive, send_with_id)
            else:
                record.status = record.status or 500
        finally:
            current_request.reset(token)
            seconds = time.perf_counter() - record.started
            record.route = route_template(self.router_app, scope)
            self.metrics.observe_request(record, seconds)
            log_request(record, seconds * 1000)


class ShutdownDeadlineMiddleware:
    """Keeps the runtime's list of requests in progress; a request cancelled because SHUTDOWN_TIMEOUT ran out (see
    Runtime.expire_requests) is answered 503 in our error shape, not uvicorn's plain-text 500."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.runtime.requests.add(task)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not self.runtime.shutdown_expired:
                raise
            task.uncancel()
            if not started:  # else the half-sent answer ends with the connection
                message = "the server is shutting down and SHUTDOWN_TIMEOUT ran out before this request finished; retry"
                answer = json_response(error_body(ErrorKind.SHUTTING_DOWN, message), 503, {"Connection": "close"})
                await answer(scope, receive, send)
        finally:
            self.runtime.requests.discard(task)
