"""The embeddings use case: validate, resolve media, batch through the engine, finish the vectors. No HTTP here:
callers get vectors and decide how to write them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_api.engine.batcher import Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import item_instruction
from embedding_api.media.parse import ItemSpec, check_instruction, parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.service.options import EmbeddingOptions, ServerDefaults
from embedding_api.settings import Settings


def check_served(model: str | None, served: str) -> None:
    """A request naming a model (None: any) must name the one this server serves."""
    if model is not None and model != served:
        raise ApiError(
            ErrorKind.MODEL_NOT_FOUND,
            f"{model!r} is not served here; this server serves {served!r}",
            param="model",
            code="model_not_found",
        )


@dataclass
class Embeddings:
    """One request's finished vectors, in its order, and what they cost."""

    vectors: np.ndarray
    tokens: int
    queue_ms: float
    inference_ms: float


class EmbeddingService:
    def __init__(self, settings: Settings, engine: Engine, resolver: MediaResolver, defaults: ServerDefaults) -> None:
        self.settings = settings
        self.engine = engine
        self.resolver = resolver
        self.defaults = defaults
        self.in_progress = 0

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def options(
        self,
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingOptions:
        """The request's options over the server's defaults (400 for a `dimensions` the model cannot give)."""
        if instruction is not None:
            check_instruction(instruction, self.settings.max_instruction_chars, "instruction")
        return EmbeddingOptions.merged(
            self.defaults, dimensions=dimensions, instruction=instruction, normalize=normalize, truncate=truncate
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

    async def embed(self, raw_input: Any, options: EmbeddingOptions, *, model: str | None = None) -> Embeddings:
        """One request's `input` (admitted by the caller, see `admission`), bounded by REQUEST_TIMEOUT."""
        check_served(model, self.model_name)
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                return await self._embed(raw_input, options)
        except TimeoutError:
            raise ApiError(
                ErrorKind.TIMEOUT, f"the request took longer than REQUEST_TIMEOUT={self.settings.request_timeout:g} s"
            ) from None

    async def _embed(self, raw_input: Any, options: EmbeddingOptions) -> Embeddings:
        settings = self.settings
        specs: list[ItemSpec] = parse_input(
            raw_input,
            max_items=settings.max_inputs_per_request,
            max_text_chars=settings.max_text_chars,
            max_media_per_item=settings.max_media_per_item,
            max_media_per_request=settings.max_media_per_request,
            max_parts_per_item=settings.max_parts_per_item,
            max_instruction_chars=settings.max_instruction_chars,
        )
        items = await self.resolver.resolve(specs)
        for item in items:
            item.instruction = item_instruction(item.instruction, options.instruction)
            item.truncate = options.truncate
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
            raise
        vectors = self.engine.family.finish(result.pooled, options.dimensions, options.normalize)
        return Embeddings(vectors, result.tokens, result.queue_ms, result.inference_ms)
