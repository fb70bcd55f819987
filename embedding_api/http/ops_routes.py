"""What operators and load balancers call: `/health` (GET and HEAD) and `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from embedding_api.http.dispatch import runtime_of
from embedding_api.http.encoding import json_response
from embedding_api.http.wire import Health, ModelHealth
from embedding_api.observability.metrics import CONTENT_TYPE, METRICS_PATH, Metrics

router = APIRouter()


def _without_model_path(text: str | None, model_path: str) -> str | None:
    return text.replace(model_path, "<hidden>") if text and model_path else text


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> Response:
    runtime = runtime_of(request)
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
    first = runtime.first
    models = [
        ModelHealth(
            name=model.name,
            status=model.status,  # type: ignore[arg-type]
            family=model.family.kind if model.family else None,
            device=model.family.device if model.family else None,
            dimension=model.family.dimension if model.family else None,
            detail=model.detail if keyed else _without_model_path(model.detail, model.spec.path),
        )
        for model in runtime.models
    ]
    payload = Health(
        status=status,  # type: ignore[arg-type]
        model=first.name if first else settings.model_name,
        models=models,
        model_path=(first.spec.path if first else settings.model_path) if keyed else None,
        device=family.device if family else None,
        cuda_available=runtime.cuda_available,
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
