"""From a parsed request to the service and back: which service answers, cancellation when the client leaves,
the timings a response carries. Shared by every route that embeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import DEFAULT_PRIORITY, PRIORITIES, Priority
from embedding_api.observability.logs import current_request
from embedding_api.service.embeddings import Embeddings, EmbeddingService
from embedding_api.service.options import EmbeddingOptions
from embedding_api.service.runtime import Runtime

Result = TypeVar("Result")
PRIORITY_HEADER = "X-Priority"


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def accepting(request: Request) -> Runtime:
    """The runtime, once it can answer embeddings at all: else the 503 that says why (shutting down, a model that
    failed to load, nothing loaded yet). Checked before the body is read."""
    runtime = runtime_of(request)
    if runtime.draining:
        raise ApiError(ErrorKind.SHUTTING_DOWN, "the server is shutting down; retry on another instance")
    if runtime.status == "error":
        raise ApiError(ErrorKind.NOT_READY, f"the model failed to load: {runtime.detail}", code="model_unavailable")
    if not any(model.ready for model in runtime.models):
        raise ApiError(ErrorKind.NOT_READY, "the model is still loading; retry shortly", code="model_loading")
    return runtime


def request_priority(request: Request, in_body: Priority | None) -> Priority:
    """The body's `priority`, else the X-Priority header's (any case), else interactive; a header naming neither
    is a 400 on `priority` (an unknown body value is refused when the body is parsed)."""
    if in_body is not None:
        return in_body
    header = request.headers.get(PRIORITY_HEADER)
    if header is None:
        return DEFAULT_PRIORITY
    value = header.strip().lower()
    if value not in PRIORITIES:
        raise ApiError(
            ErrorKind.INVALID_REQUEST,
            f"must be {' or '.join(PRIORITIES)} (the {PRIORITY_HEADER} header), got {header[:40]!r}",
            param="priority",
        )
    return value


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Coroutine[Any, Any, Result]) -> Result:
    """Run `work`, cancelling it (and so dropping its queued items) if the client goes away first or we are
    cancelled (SHUTDOWN_TIMEOUT)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ApiError(ErrorKind.INVALID_REQUEST, "the client disconnected", code="client_disconnected")
    return task.result()


async def run_embedding(
    request: Request, service: EmbeddingService, raw_input: Any, options: EmbeddingOptions
) -> Embeddings:
    """The use case, cancelled if the client leaves; its timings go to the request's log line and metrics."""
    record = current_request.get()
    if record is not None:
        record.work_started = time.perf_counter()
        record.model = service.model_name
    answer = await until_disconnect(request, service.embed(raw_input, options))
    if record is not None:
        record.tokens, record.queue_ms, record.inference_ms = answer.tokens, answer.queue_ms, answer.inference_ms
    return answer


def timing_headers(answer: Embeddings, started: float) -> dict[str, str]:
    total_ms = (time.perf_counter() - started) * 1000
    return {
        "x-queue-time": f"{answer.queue_ms:.2f}",
        "x-inference-time": f"{answer.inference_ms:.2f}",
        "x-total-time": f"{total_ms:.2f}",
    }
