"""Logging: text or JSON lines, request ids, and the one line each request leaves behind.

What never reaches a log: API keys, request bodies (texts, image bytes) and exception messages (which can quote
a body, e.g. pydantic's `input_value=...`): tracebacks show exception types and frames only.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TextIO

import orjson

ACCESS_LOGGER = "embedding_api.access"
REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:\-]")
# Libraries whose INFO lines carry full URLs (media URLs may hold signed query strings).
_QUIET_LOGGERS = ("httpx", "httpcore", "multipart", "python_multipart")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(incoming: str | None) -> str:
    """The client's id, kept when usable (unsafe characters dropped, cut to 128), else a fresh one."""
    if incoming:
        cleaned = _REQUEST_ID_UNSAFE.sub("", incoming)[:MAX_REQUEST_ID_LENGTH]
        if cleaned:
            return cleaned
    return new_request_id()


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; read once at the end for the log line and the metrics."""

    request_id: str
    method: str
    started: float = field(default_factory=time.perf_counter)
    route: str = "unmatched"
    status: int = 0
    model: str | None = None  # the served model that answered
    priority: str | None = None  # interactive or bulk, once its items reached the engine
    modalities: Counter[str] = field(default_factory=Counter)
    tokens: int | None = None
    work_started: float | None = None  # the use case began (parsing, fetching, decoding, tokenising)
    queued_at: float | None = None  # the items reached the batch queue
    queue_ms: float | None = None
    inference_ms: float | None = None

    @property
    def preprocess_ms(self) -> float | None:
        if self.work_started is None or self.queued_at is None:
            return None
        return (self.queued_at - self.work_started) * 1000

    def fields(self, total_ms: float) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "model": self.model,
            "items": dict(sorted(self.modalities.items())),
            "tokens": self.tokens,
            "ms": round(total_ms, 2),
        }


current_request: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "embedding_api_request", default=None
)


def log_request(record: RequestRecord, total_ms: float) -> None:
    """The per-request line: id, method, route, status, items by modality, tokens, milliseconds."""
    fields = record.fields(total_ms)
    items = ",".join(f"{name}:{count}" for name, count in fields["items"].items()) or "-"
    tokens = "-" if fields["tokens"] is None else fields["tokens"]
    logging.getLogger(ACCESS_LOGGER).info(
        "request_id=%s method=%s route=%s status=%d model=%s items=%s tokens=%s ms=%.2f",
        fields["request_id"],
        fields["method"],
        fields["route"],
        fields["status"],
        fields["model"] or "-",
        items,
        tokens,
        fields["ms"],
        extra={"fields": fields},
    )


def safe_traceback(exc_info: ExcInfo) -> str:
    """Frames and exception types of the whole chain; messages left out (they may quote the request)."""
    _, exc, tb = exc_info
    lines: list[str] = []
    seen: set[int] = set()
    chain: list[tuple[BaseException, TracebackType | None]] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, current.__traceback__ if current is not exc else tb))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for position, (error, frames) in enumerate(reversed(chain)):
        if position:
            lines.append("\nwhich led to:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(frames))
        lines.append(f"{type(error).__module__}.{type(error).__qualname__} (message withheld)\n")
    return "".join(lines).rstrip("\n")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        cached, record.exc_text = record.exc_text, None  # another handler may have cached the full traceback
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei: Any) -> str:
        return safe_traceback(ei)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the request line's fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = safe_traceback(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(payload, default=str).decode("utf-8")


def configure_logging(
    level: str = "info", log_format: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    """Root handler (stderr unless `stream`) in the chosen format; calling it again replaces the one it installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_embedding_api", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler._embedding_api = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # uvicorn's own loggers go through the root handler (and so the chosen format).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
