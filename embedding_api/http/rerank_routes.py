"""`POST /v1/rerank` (also `/rerank` and `/v2/rerank`): Cohere's and Jina's request shape, and TEI's (`texts`)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http.body import openapi_body, read_json
from embedding_api.http.dispatch import accepting, request_priority, until_disconnect
from embedding_api.http.encoding import json_response
from embedding_api.http.wire import ERROR_RESPONSES, PRIORITY_DESCRIPTION
from embedding_api.items import Priority
from embedding_api.observability.logs import current_request

router = APIRouter(tags=["rerank"])


class RerankRequest(BaseModel):
    """Cohere / Jina: `query`, `documents`, `top_n`, `return_documents`; TEI: `query`, `texts`, `raw_scores`,
    `return_text`, `truncate`. `query` and each document may be any input form `/v1/embeddings` takes."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="A served reranker; omitted = the first one.")
    query: Any = Field(description="A string, an image or video object, or a fused array of parts.")
    documents: list[Any] | None = Field(None, description="The candidates, each any input form.")
    texts: list[str] | None = Field(None, description="TEI's name for text documents.")
    top_n: int | None = Field(None, ge=1, strict=True, description="Return only the best n.")
    return_documents: bool = Field(False, description="Echo each document in its result.")
    return_text: bool = Field(False, description="TEI: echo each text.")
    raw_scores: bool = Field(False, description="TEI: the logit instead of the probability.")
    truncate: bool = Field(True, description="Shorten over-long pairs to fit; false: answer 400 instead.")
    instruction: str | None = Field(None, description="The task; default: the reranker's own.")
    priority: Priority | None = Field(None, description=PRIORITY_DESCRIPTION)


def _document_echo(document: Any) -> Any:
    return {"text": document} if isinstance(document, str) else document


@router.post("/v1/rerank", responses=ERROR_RESPONSES, openapi_extra=openapi_body(RerankRequest))
async def rerank(request: Request) -> Response:
    runtime = accepting(request)
    with runtime.admission.admit():
        body = await read_json(request, runtime.settings, RerankRequest)
        tei = body.documents is None and body.texts is not None
        documents: list[Any] = list(body.texts or []) if tei else list(body.documents or [])
        if body.documents is None and body.texts is None:
            raise ApiError(ErrorKind.INVALID_REQUEST, "a value is required", param="documents")
        priority = request_priority(request, body.priority)
        service = runtime.reranker_for(body.model)
        record = current_request.get()
        if record is not None:
            record.work_started = time.perf_counter()
            record.model = service.model_name
        answer = await until_disconnect(
            request,
            service.rerank(
                body.query, documents, instruction=body.instruction, truncate=body.truncate, priority=priority
            ),
        )
        if record is not None:
            record.tokens, record.queue_ms, record.inference_ms = answer.tokens, answer.queue_ms, answer.inference_ms
    scores = answer.scores.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n or len(scores)]
    if tei:
        tei_results = []
        for index in order:
            score = scores[index]
            if body.raw_scores:  # the logit the probability came from
                score = math.log(max(score, 1e-12) / max(1 - score, 1e-12))
            row: dict[str, Any] = {"index": index, "score": score}
            if body.return_text:
                row["text"] = documents[index]
            tei_results.append(row)
        return json_response(tei_results)
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if body.return_documents:
            result["document"] = _document_echo(documents[index])
        results.append(result)
    return json_response(
        {
            "id": uuid.uuid4().hex,
            "model": service.model_name,
            "results": results,
            "usage": {"prompt_tokens": answer.tokens, "total_tokens": answer.tokens},
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }
    )


router.add_api_route("/rerank", rerank, methods=["POST"], include_in_schema=False)
router.add_api_route("/v2/rerank", rerank, methods=["POST"], include_in_schema=False)
