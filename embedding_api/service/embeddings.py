"""The embeddings use case: validate, resolve media, batch through the engine, shape the answer. No HTTP here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from embedding_api.engine.batcher import Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http.encoding import embeddings_response
from embedding_api.http.wire import EmbeddingRequest
from embedding_api.media.parse import ItemSpec, check_instruction, parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.settings import Settings


@dataclass
class EmbeddingAnswer:
    body: bytes
    item_count: int
    tokens: int
    queue_ms: float
    inference_ms: float


class EmbeddingService:
    def __init__(self, settings: Settings, engine: Engine, resolver: MediaResolver) -> None:
        self.settings = settings
        self.engine = engine
        self.resolver = resolver
        self.dimension = engine.family.dimension
        self.in_progress = 0

    def output_dimension(self, requested: int | None) -> int | None:
        """The MRL size to cut to, or None for the model's full size."""
        size = requested if requested is not None else self.settings.embedding_dimension
        if size is None:
            return None
        if not 1 <= size <= self.dimension:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"dimensions must be between 1 and {self.dimension} for this model, got {size}",
                param="dimensions",
            )
        return size if size < self.dimension else None

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.model_name:
            raise ApiError(
                ErrorKind.MODEL_NOT_FOUND,
                f"model {model!r} is not served here; this server serves {self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )

    @contextmanager
    def admission(self) -> Iterator[None]:
        """One request in progress, bounded by MAX_CONCURRENT_REQUESTS: past it the caller is told to retry at once.

        Entered before the request's body is read, so refused requests cost neither memory nor parsing.
        """
        if self.in_progress >= self.settings.max_concurrent_requests:
            raise ApiError(ErrorKind.OVERLOADED, "the server is busy: too many requests in progress, retry shortly")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1

    async def embed(self, request: EmbeddingRequest) -> EmbeddingAnswer:
        """One request (admitted by the caller, see `admission`), bounded by REQUEST_TIMEOUT."""
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                return await self._embed(request)
        except TimeoutError:
            raise ApiError(
                ErrorKind.TIMEOUT, f"the request took longer than REQUEST_TIMEOUT={self.settings.request_timeout:g} s"
            ) from None

    async def _embed(self, request: EmbeddingRequest) -> EmbeddingAnswer:
        self.check_model(request.model)
        dimensions = self.output_dimension(request.dimensions)
        settings = self.settings
        if request.instruction is not None:
            check_instruction(request.instruction, settings.max_instruction_chars, "instruction")
        specs: list[ItemSpec] = parse_input(
            request.input,
            max_items=settings.max_inputs_per_request,
            max_text_chars=settings.max_text_chars,
            max_media_per_item=settings.max_media_per_item,
            max_media_per_request=settings.max_media_per_request,
            max_parts_per_item=settings.max_parts_per_item,
            max_instruction_chars=settings.max_instruction_chars,
        )
        items = await self.resolver.resolve(specs)
        for item in items:
            if item.instruction is None:
                item.instruction = request.instruction or None
            item.truncate = request.truncate
        try:
            prepared = await self.engine.prepare(items)
            total = sum(item.tokens for item in prepared)
            if total > settings.max_tokens_per_request:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"the request needs {total} tokens, above MAX_TOKENS_PER_REQUEST={settings.max_tokens_per_request}; "
                    "split it into several requests",
                    param="input",
                )
            result = await self.engine.embed(prepared)
        except ApiError as error:
            if error.param is None and error.item_index is not None:
                error.param = specs[error.item_index].param
                error.message = f"{error.param}: {error.message}"
            raise
        vectors = self.engine.family.finish(result.pooled, dimensions, request.normalize)
        body = embeddings_response(
            vectors,
            encoding_format=request.encoding_format,
            model=self.settings.model_name,
            prompt_tokens=result.tokens,
        )
        return EmbeddingAnswer(
            body=body,
            item_count=len(items),
            tokens=result.tokens,
            queue_ms=result.queue_ms,
            inference_ms=result.inference_ms,
        )
