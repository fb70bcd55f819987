"""The rerank use case: one query, many documents (each any input form `/v1/embeddings` takes), one score per
pair, batched through the reranker's engine. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding_api.engine.batcher import Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import DEFAULT_PRIORITY, Item, Priority, item_instruction
from embedding_api.media.parse import ItemSpec, check_instruction
from embedding_api.media.resolve import MediaResolver
from embedding_api.service.limits import parse_within_limits, run_items, within_request_timeout
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
        self,
        query: Any,
        documents: list[Any],
        *,
        instruction: str | None = None,
        truncate: bool = True,
        priority: Priority = DEFAULT_PRIORITY,
    ) -> Reranked:
        """Score every document against the query at `priority`, bounded by REQUEST_TIMEOUT."""
        work = self._rerank(query, documents, instruction, truncate, priority)
        return await within_request_timeout(self.settings, work)

    def _parse(self, raw: Any, old: str, new: str, max_items: int) -> list[ItemSpec]:
        try:
            return parse_within_limits(raw, self.settings, max_items)
        except ApiError as error:
            raise _renamed(error, old, new) from None

    async def _rerank(
        self, query: Any, documents: list[Any], instruction: str | None, truncate: bool, priority: Priority
    ) -> Reranked:
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
        params = [spec.param for spec in document_specs]
        advice = "send fewer or shorter documents"
        result = await run_items(
            self.engine, pairs, params, settings, param="documents", advice=advice, priority=priority
        )
        scores = self.engine.family.score(result.pooled)  # type: ignore[attr-defined]
        return Reranked(np.asarray(scores, dtype=np.float32), result.tokens, result.queue_ms, result.inference_ms)
