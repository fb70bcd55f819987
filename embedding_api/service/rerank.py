"""The rerank use case: one query, many documents (each any input form `/v1/embeddings` takes), one score per
pair, batched through the reranker's engine. No HTTP here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_api.engine.batcher import Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import Item, item_instruction
from embedding_api.media.parse import ItemSpec, check_instruction, parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.settings import Settings


@dataclass
class Reranked:
    """One score per document, in the request's order, and what they cost."""

    scores: np.ndarray
    tokens: int
    queue_ms: float
    inference_ms: float


def _renamed(error: ApiError, old: str, new: str) -> ApiError:
    """Errors name the rerank request's own fields (`query`, `documents[3]`) instead of `input[...]`."""
    if error.param is not None and error.param.startswith(old):
        error.param = new + error.param[len(old) :]
    return error


class RerankService:
    """One served reranker: its engine and media resolver."""

    def __init__(self, settings: Settings, engine: Engine, resolver: MediaResolver, *, name: str) -> None:
        self.settings = settings
        self.engine = engine
        self.resolver = resolver
        self.model_name = name

    async def rerank(
        self, query: Any, documents: list[Any], *, instruction: str | None = None, truncate: bool = True
    ) -> Reranked:
        """Score every document against the query, bounded by REQUEST_TIMEOUT."""
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                return await self._rerank(query, documents, instruction, truncate)
        except TimeoutError:
            raise ApiError(
                ErrorKind.TIMEOUT, f"the request took longer than REQUEST_TIMEOUT={self.settings.request_timeout:g} s"
            ) from None

    def _parse(self, raw: Any, old: str, new: str, max_items: int) -> list[ItemSpec]:
        settings = self.settings
        try:
            return parse_input(
                raw,
                max_items=max_items,
                max_text_chars=settings.max_text_chars,
                max_media_per_item=settings.max_media_per_item,
                max_media_per_request=settings.max_media_per_request,
                max_parts_per_item=settings.max_parts_per_item,
                max_instruction_chars=settings.max_instruction_chars,
            )
        except ApiError as error:
            raise _renamed(error, old, new) from None

    async def _rerank(self, query: Any, documents: list[Any], instruction: str | None, truncate: bool) -> Reranked:
        settings = self.settings
        if instruction is not None:
            check_instruction(instruction, settings.max_instruction_chars, "instruction")
        if not isinstance(documents, list) or not documents:
            raise ApiError(ErrorKind.INVALID_REQUEST, "must be a non-empty array", param="documents")
        if len(documents) > settings.max_rerank_documents:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"has {len(documents)} documents; at most {settings.max_rerank_documents} are allowed "
                "(MAX_RERANK_DOCUMENTS)",
                param="documents",
            )
        query_specs = self._parse([query], "input[0]", "query", 1)
        document_specs = self._parse(documents, "input", "documents", settings.max_rerank_documents)
        for spec in document_specs:
            spec.param = "documents" + spec.param[len("input") :]
        query_specs[0].param = "query"
        try:
            items = await self.resolver.resolve(query_specs + document_specs)
        except ApiError as error:
            raise _renamed(_renamed(error, "input[0]", "query"), "input", "documents") from None
        query_item, document_items = items[0], items[1:]
        pairs = [
            Item(
                texts=query_item.texts,
                images=query_item.images,
                videos=query_item.videos,
                instruction=item_instruction(query_item.instruction, instruction),
                truncate=truncate,
                document=document,
            )
            for document in document_items
        ]
        try:
            prepared = await self.engine.prepare(pairs)
            total = sum(item.tokens for item in prepared)
            if total > settings.max_tokens_per_request:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"the request needs {total} tokens, above MAX_TOKENS_PER_REQUEST={settings.max_tokens_per_request}; "
                    "send fewer or shorter documents",
                    param="documents",
                )
            result = await self.engine.embed(prepared)
        except ApiError as error:
            if error.param is None and error.item_index is not None:
                error.param = document_specs[error.item_index].param
            raise
        scores = self.engine.family.score(result.pooled)  # type: ignore[attr-defined]
        return Reranked(np.asarray(scores, dtype=np.float32), result.tokens, result.queue_ms, result.inference_ms)
