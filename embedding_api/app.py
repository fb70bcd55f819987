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
from embedding_api.auth import AuthMiddleware, KeyChecker
from embedding_api.errors import ApiError, ErrorKind, error_body
from embedding_api.request_body import validation_error
from embedding_api.responses import json_response
from embedding_api.routes import router
from embedding_api.runtime import FamilyLoader, Runtime
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

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return json_response(error_body(ErrorKind.INTERNAL, "internal error"), 500)


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
    app.add_middleware(AuthMiddleware, checker=KeyChecker(settings.api_keys))
    _install_error_handlers(app)
    app.include_router(router)
    return app
