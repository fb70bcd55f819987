"""create_app(): lifespan (background model load), auth, error handlers, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from embedding_api import __version__
from embedding_api.errors import ApiError, ErrorKind, error_body
from embedding_api.http.auth import PUBLIC_PATHS, AuthMiddleware, KeyChecker
from embedding_api.http.body import validation_error
from embedding_api.http.cohere_routes import router as cohere_router
from embedding_api.http.encoding import json_response
from embedding_api.http.middleware import ObservingMiddleware, ShutdownDeadlineMiddleware
from embedding_api.http.openai_routes import router as openai_router
from embedding_api.http.ops_routes import router as ops_router
from embedding_api.http.playground import router as playground_router
from embedding_api.http.rerank_routes import router as rerank_router
from embedding_api.http.seed_routes import router as seed_router
from embedding_api.items import PRIORITIES, Priority
from embedding_api.observability.metrics import METRICS_PATH, Metrics, ModelInfo
from embedding_api.service.runtime import FamilyLoader, Runtime
from embedding_api.settings import Settings

log = logging.getLogger(__name__)

_HTTP_KINDS = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED, 413: ErrorKind.PAYLOAD_TOO_LARGE}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        headers = {"Retry-After": "1"} if exc.kind is ErrorKind.OVERLOADED else None
        return json_response(exc.body(), exc.status, headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_: Request, exc: RequestValidationError) -> Response:
        error = validation_error(list(exc.errors()))
        return json_response(error.body(), error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = _HTTP_KINDS.get(exc.status_code, ErrorKind.INVALID_REQUEST)
        return json_response(error_body(kind, str(exc.detail)), exc.status_code)

    # Unexpected exceptions: ObservingMiddleware (outermost) logs them and answers 500 in our shape.


def _metrics(runtime: Runtime) -> Metrics:
    """This app's metrics, reading the queue and the model from the runtime at scrape time."""

    def queue_depth() -> dict[Priority, int]:
        depth = dict.fromkeys(PRIORITIES, 0)
        for model in runtime.models:
            if model.engine is not None:
                for priority, count in model.engine.queued_by_priority().items():
                    depth[priority] += count
        return depth

    def model_info() -> list[ModelInfo]:
        return [
            ModelInfo(
                name=model.name,
                dimension=model.service.defaults.dimensions or model.family.dimension,
                device=model.family.device,
                dtype=model.family.dtype,
                family=model.family.kind,
                queued=model.engine.queued_items,
            )
            for model in runtime.models
            if model.family is not None and model.engine is not None and model.service is not None
        ]

    metrics = Metrics(queue_depth=queue_depth, model_info=model_info)
    runtime.engine_observer = metrics
    runtime.on_media_fetched = metrics.media_fetched
    return metrics


def create_app(
    settings: Settings | None = None,
    *,
    loader: FamilyLoader | None = None,
    on_fatal: Any = None,
) -> FastAPI:
    """The ASGI app. `loader` builds the family adapter (default: from MODEL_PATH)."""
    settings = settings or Settings()
    runtime = Runtime(settings=settings, on_fatal=on_fatal)
    if loader is not None:
        runtime.loader = loader

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("!!! API_KEY is empty: authentication is OFF and anyone who can reach this port may use it !!!")
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="embedding_api",
        version=__version__,
        description="OpenAI-compatible embeddings for text, images, videos and mixed inputs (Qwen3-VL-Embedding).",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.metrics = _metrics(runtime)
    public = PUBLIC_PATHS if settings.metrics_require_key else PUBLIC_PATHS | {METRICS_PATH}
    app.state.key_checker = KeyChecker(settings.api_keys)
    app.add_middleware(AuthMiddleware, checker=app.state.key_checker, public_paths=public)
    app.add_middleware(ShutdownDeadlineMiddleware, runtime=runtime)
    app.add_middleware(ObservingMiddleware, metrics=app.state.metrics, router_app=app)  # outermost
    _install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(ops_router)
    app.include_router(rerank_router)
    app.include_router(cohere_router)
    app.include_router(seed_router)
    app.include_router(playground_router)
    return app
