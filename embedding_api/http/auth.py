"""API-key check for every route not on the public list (routes added later are protected by default).

`/metrics` joins the public list unless METRICS_REQUIRE_KEY is set (see create_app).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_api.errors import ErrorKind, error_body
from embedding_api.http.encoding import json_response

PUBLIC_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})


_OWS = " \t"  # HTTP's optional whitespace; str.strip() would also eat bytes 0x85 and 0xa0 of UTF-8 keys


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _encodings(key: str) -> list[bytes]:
    """The bytes a client may send for `key`: UTF-8 (what curl, httpx and browsers send), and Latin-1 when the key
    has one (what Python's http.client and requests send)."""
    forms = [key.encode("utf-8")]
    try:
        latin = key.encode("latin-1")
    except UnicodeEncodeError:
        return forms
    return forms if latin == forms[0] else [*forms, latin]


class KeyChecker:
    """Constant-time comparison against every configured key (hashes first, so lengths leak nothing)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(form) for key in keys for form in _encodings(key))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str | bytes | None) -> bool:
        """`presented` as the header's raw bytes, or as text (compared as UTF-8)."""
        if presented is None:
            return False
        candidate = _digest(presented.encode("utf-8") if isinstance(presented, str) else presented)
        matched = False
        for digest in self._digests:  # no early exit
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def accepts_scope(self, scope: Scope) -> bool:
        """Whether the request carries a configured key (always true when auth is off)."""
        if not self.enabled:
            return True
        # Latin-1 maps each header byte to one character and back, so the key's raw bytes are compared.
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        key = presented_key(headers)
        return self.accepts(None if key is None else key.encode("latin-1"))


def presented_key(headers: dict[str, str]) -> str | None:
    """`Authorization: Bearer <key>`, a bare key in `Authorization`, or `X-API-Key: <key>`."""
    header = headers.get("x-api-key")
    if header:
        return header.strip(_OWS)
    authorization = headers.get("authorization", "").strip(_OWS)
    if not authorization:
        return None
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() == "bearer" and rest.strip(_OWS):
        return rest.strip(_OWS)
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
        if self.checker.accepts_scope(scope):
            await self.app(scope, receive, send)
            return
        message = "invalid or missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        response = json_response(error_body(ErrorKind.AUTHENTICATION, message, code="invalid_api_key"), 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
