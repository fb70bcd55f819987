"""Ray Serve's HTTP proxy answering for itself, in our error shape and retryable.

The proxy answers without a replica when one dies mid-request (nothing sent: its server then says a plain-text 500),
when no replica is up yet or Serve's queue is full (plain-text 503), or when Serve's own timeout runs out (408,
answered 504 as our REQUEST_TIMEOUT is).
`ProxyErrorsMiddleware` turns those into our OpenAI-shaped body, and a lost replica into a 503 with Retry-After: the
request did not complete and may be sent again (an embedding has no side effects). An answer that carries
`x-replica` came from our app and passes untouched.

The proxy loads this through RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=PROXY_CALLBACK, which must be in the
environment of the proxy's process (`serve-ray` puts it there; deploy/rayservice.yaml sets it on every node).
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_api.errors import ErrorKind, error_body
from embedding_api.http.encoding import json_response

log = logging.getLogger(__name__)

PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "embedding_api.scale.proxy_errors:proxy_middlewares"
REPLICA_HEADER = b"x-replica"
RETRY_AFTER_S = "1"

_LOST = "the replica serving this request stopped before it answered; retry"
_PROXY_ANSWERS: dict[int, tuple[int, ErrorKind, str]] = {
    408: (504, ErrorKind.TIMEOUT, "the request took longer than Ray Serve's request timeout"),
    429: (429, ErrorKind.OVERLOADED, "every replica is busy and Ray Serve's queue is full; retry shortly"),
    500: (503, ErrorKind.NOT_READY, _LOST),
    502: (503, ErrorKind.NOT_READY, _LOST),
    503: (503, ErrorKind.NOT_READY, "no replica is ready to take this request yet; retry shortly"),
    504: (503, ErrorKind.NOT_READY, _LOST),
}


class ProxyErrorsMiddleware:
    """Outermost in the proxy: an answer without `x-replica` and with an error status is rewritten, and a request
    that ends with nothing sent is answered 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        replaced = False  # the proxy's own error answer: its start and body are dropped, ours is sent instead

        async def rewrite(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                started = True
                if message["status"] in _PROXY_ANSWERS and all(k.lower() != REPLICA_HEADER for k, _ in headers):
                    replaced = True
                    await _answer(message["status"], scope, receive, send)
                    return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if started:
                raise
            log.warning("the proxy failed before answering (a replica stopped?)", exc_info=True)
        if not started:
            await _answer(500, scope, receive, send)


async def _answer(proxy_status: int, scope: Scope, receive: Receive, send: Send) -> None:
    status, kind, message = _PROXY_ANSWERS[proxy_status]
    headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
    await json_response(error_body(kind, message), status, headers)(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names: the proxy wraps itself in these."""
    return [Middleware(ProxyErrorsMiddleware)]
