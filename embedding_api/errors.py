"""Error kinds, the one table that maps them to HTTP statuses, and the OpenAI error body."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """What went wrong, independent of HTTP."""

    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_INPUT = "unsupported_input"
    MEDIA_FETCH = "media_fetch"
    MEDIA_DECODE = "media_decode"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    AUTHENTICATION = "authentication"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    OVERLOADED = "overloaded"
    ITEM_TOO_LARGE = "item_too_large"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


# kind -> (HTTP status, OpenAI error type)
ERROR_TABLE: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.UNSUPPORTED_INPUT: (400, "invalid_request_error"),
    ErrorKind.MEDIA_FETCH: (400, "invalid_request_error"),
    ErrorKind.MEDIA_DECODE: (400, "invalid_request_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.REQUEST_TIMEOUT: (408, "invalid_request_error"),
    ErrorKind.HEADERS_TOO_LARGE: (431, "invalid_request_error"),
    ErrorKind.AUTHENTICATION: (401, "authentication_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorKind.OVERLOADED: (429, "rate_limit_error"),
    ErrorKind.ITEM_TOO_LARGE: (422, "invalid_request_error"),
    ErrorKind.NOT_READY: (503, "service_unavailable"),
    ErrorKind.SHUTTING_DOWN: (503, "service_unavailable"),
    ErrorKind.TOO_MANY_CONNECTIONS: (503, "service_unavailable"),
    ErrorKind.TIMEOUT: (504, "timeout"),
    ErrorKind.INTERNAL: (500, "server_error"),
}


class ApiError(Exception):
    """An error with a kind, a message for the client and the request field it concerns.

    The message never names the field: `error_body` puts `param: ` in front of it, once, for every error.
    """

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code if code is not None else kind.value
        self.item_index: int | None = None  # which input item failed, filled in by whoever knows

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.kind][0]

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.kind, self.message, param=self.param, code=self.code)


def error_body(kind: ErrorKind, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI-shaped error body; the message is prefixed with the field it concerns."""
    return {
        "error": {
            "message": f"{param}: {message}" if param else message,
            "type": ERROR_TABLE[kind][1],
            "param": param,
            "code": code if code is not None else kind.value,
        }
    }
