"""API-key check for every route not on the public list (routes added later are protected by default).

`/metrics` joins the public list unless METRICS_REQUIRE_KEY is set (see create_app).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_api.errors import ErrorKind, error_body
from embedding_api.responses import json_response

PUBLIC_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class KeyChecker:
    """Constant-time comparison against every configured key (hashes first, so lengths leak nothing)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(key) for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if presented is None:
            return False
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:  # no early exit
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def presented_key(headers: dict[str, str]) -> str | None:
    """`Authorization: Bearer <key>`, a bare key in `Authorization`, or `X-API-Key: <key>`."""
    header = headers.get("x-api-key")
    if header:
        return header.strip()
    authorization = headers.get("authorization", "").strip()
    if not authorization:
        return None
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    return authorization


class AuthMiddleware:
    """Pure ASGI middleware: 401 in OpenAI's error shape unless the path is public or the key is good."""

    def __init__(self, app: ASGIApp, checker: KeyChecker, public_paths: frozenset[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.checker = checker
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.checker.enabled or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.checker.accepts(presented_key(headers)):
            await self.app(scope, receive, send)
            return
        message = "invalid or missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        response = json_response(error_body(ErrorKind.AUTHENTICATION, message, code="invalid_api_key"), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
