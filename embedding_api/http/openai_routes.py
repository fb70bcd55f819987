"""Thin handlers: parse, call the service, shape the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http.body import openapi_body, parse_body_off_loop
from embedding_api.http.responses import json_response
from embedding_api.http.wire import EmbeddingRequest, EmbeddingResponse, ErrorResponse, Health, ModelCard, ModelList
from embedding_api.observability.logs import current_request
from embedding_api.observability.metrics import CONTENT_TYPE, METRICS_PATH, Metrics
from embedding_api.service.embeddings import EmbeddingAnswer, EmbeddingService
from embedding_api.service.runtime import Runtime

Result = TypeVar("Result")
Body = TypeVar("Body", bound=BaseModel)
router = APIRouter()
_STARTED = int(time.time())
_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 422, 500, 503, 504)
}
_ERRORS[429] = {
    "model": ErrorResponse,
    "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying."}},
}


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


async def read_body(request: Request, limit: int, timeout: float) -> bytearray:
    """The body, refused with 413 as soon as it passes `limit` (Content-Length checked first), 408 past `timeout`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise _too_large(limit)
                body += chunk
    except TimeoutError:
        raise ApiError(
            ErrorKind.REQUEST_TIMEOUT,
            f"the request body did not arrive within BODY_READ_TIMEOUT={timeout:g} s",
            code="body_timeout",
        ) from None
    return body


async def read_json(request: Request, service: EmbeddingService, model: type[Body]) -> Body:
    """The body read (bounded in size and time) and parsed (off the event loop when big) as `model`."""
    settings = service.settings
    raw = await read_body(request, settings.max_request_bytes, settings.body_read_timeout)
    return await parse_body_off_loop(raw, model, settings.max_json_values)


def _too_large(limit: int) -> ApiError:
    return ApiError(ErrorKind.PAYLOAD_TOO_LARGE, f"the request body is over MAX_REQUEST_BYTES={limit}")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _service(request: Request) -> EmbeddingService:
    runtime = _runtime(request)
    if runtime.draining:
        raise ApiError(ErrorKind.SHUTTING_DOWN, "the server is shutting down; retry on another instance")
    if runtime.status == "error":
        raise ApiError(ErrorKind.NOT_READY, f"the model failed to load: {runtime.detail}", code="model_unavailable")
    if not runtime.ready or runtime.service is None:
        raise ApiError(ErrorKind.NOT_READY, "the model is still loading; retry shortly", code="model_loading")
    return runtime.service


async def run_embedding(request: Request, service: EmbeddingService, body: EmbeddingRequest) -> EmbeddingAnswer:
    """The use case, cancelled if the client leaves; its timings go to the request's log line and metrics."""
    record = current_request.get()
    if record is not None:
        record.work_started = time.perf_counter()
    answer = await until_disconnect(request, service.embed(body))
    if record is not None:
        record.tokens, record.queue_ms, record.inference_ms = answer.tokens, answer.queue_ms, answer.inference_ms
    return answer


def timing_headers(answer: EmbeddingAnswer, started: float) -> dict[str, str]:
    total_ms = (time.perf_counter() - started) * 1000
    return {
        "x-queue-time": f"{answer.queue_ms:.2f}",
        "x-inference-time": f"{answer.inference_ms:.2f}",
        "x-total-time": f"{total_ms:.2f}",
    }


@router.post(
    "/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS, openapi_extra=openapi_body(EmbeddingRequest)
)
async def create_embeddings(request: Request) -> Response:
    started = time.perf_counter()
    service = _service(request)
    with service.admission():  # before the body is read: a refused request costs no memory
        body = await read_json(request, service, EmbeddingRequest)
        answer = await run_embedding(request, service, body)
    return Response(answer.body, media_type="application/json", headers=timing_headers(answer, started))


def _model_card(runtime: Runtime) -> ModelCard:
    return ModelCard(id=runtime.settings.model_name, created=_STARTED)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model_card(_runtime(request))])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
async def get_model(model_id: str, request: Request) -> ModelCard:
    runtime = _runtime(request)
    if model_id != runtime.settings.model_name:
        raise ApiError(
            ErrorKind.MODEL_NOT_FOUND,
            f"model {model_id!r} is not served here; this server serves {runtime.settings.model_name!r}",
            param="model",
            code="model_not_found",
        )
    return _model_card(runtime)


def _without_model_path(text: str | None, model_path: str) -> str | None:
    return text.replace(model_path, "<hidden>") if text and model_path else text


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> Response:
    runtime = _runtime(request)
    settings = runtime.settings
    family = runtime.family
    status = "draining" if runtime.draining else ("ok" if runtime.ready else runtime.status)
    detail = runtime.detail
    if status == "ok" and not await runtime.engine_is_healthy():
        status, detail = "error", "the engine keeps failing: embeddings do not complete"
    keyed = request.app.state.key_checker.accepts_scope(request.scope)
    note = runtime.random_weights_note
    if not keyed:  # /health is public: where the weights lie is for callers with a key only
        detail, note = _without_model_path(detail, settings.model_path), _without_model_path(note, settings.model_path)
    payload = Health(
        status=status,  # type: ignore[arg-type]
        model=settings.model_name,
        model_path=settings.model_path if keyed else None,
        device=family.device if family else None,
        cuda_available=torch.cuda.is_available(),
        embedding_dimension=settings.embedding_dimension or (family.dimension if family else None),
        max_image_width=settings.max_image_width or settings.max_image_size,
        max_image_height=settings.max_image_height or settings.max_image_size,
        detail=detail,
        random_weights=runtime.random_weights,
        note=note,
    )
    return json_response(payload.model_dump(), 200 if status == "ok" else 503)


@router.head("/health", include_in_schema=False)
async def health_head(request: Request) -> Response:
    """What GET answers (status and headers) without the body: some load balancers probe with HEAD."""
    answer = await health(request)
    return Response(status_code=answer.status_code, headers=dict(answer.headers))


@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; public unless METRICS_REQUIRE_KEY is set."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
