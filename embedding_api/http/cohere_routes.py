"""`POST /v2/embed`: Cohere's v2 embed request and answer (`texts`, `images`, `inputs`; `input_type`,
`embedding_types`, `output_dimension`, `truncate`). Parse, call the same embedding service as `/v1/embeddings`,
encode the answer in Cohere's shape; errors stay in our one shape."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http.body import openapi_body, read_json
from embedding_api.http.dispatch import accepting, request_priority, run_embedding, timing_headers
from embedding_api.http.encoding import embed_by_type_response, precisions_of
from embedding_api.http.wire import ERROR_RESPONSES, EncodingFormat
from embedding_api.items import Priority

router = APIRouter(tags=["cohere"])


class CohereEmbedRequest(BaseModel):
    """Cohere's `POST /v2/embed` body. One of `texts`, `images` or `inputs`; one vector per element."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="A served embedding model; omitted = the first one.")
    texts: list[str] | None = Field(None, min_length=1, description="Texts to embed.")
    images: list[str] | None = Field(None, min_length=1, description="Images as data URIs (or URLs we may fetch).")
    inputs: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="Cohere content objects: {content: [{type: text, text} | {type: image_url, image_url: {url}}]}.",
    )
    input_type: str | None = Field(
        None,
        description="search_query, search_document, classification, clustering, image (or query, document).",
    )
    embedding_types: list[EncodingFormat] | None = Field(
        None, min_length=1, description="float (default), base64, int8, uint8, binary, ubinary: several at once."
    )
    output_dimension: int | None = Field(
        None, strict=True, description="Output size (1..model size): truncated, then re-normalised."
    )
    truncate: Literal["NONE", "START", "END"] = Field(
        "END", description="END: shorten over-long text from the end; NONE: answer 400; START: not supported (400)."
    )
    max_tokens: int | None = Field(None, description="Not supported (400): the model's MAX_LENGTH applies.")
    priority: int | None = Field(
        None,
        ge=0,
        strict=True,
        description="Cohere's: 0 (the highest) = interactive, above 0 = bulk; omitted: the X-Priority header.",
    )


def _input_of(body: CohereEmbedRequest) -> tuple[str, list[Any]]:
    """Which field holds the inputs, and those inputs in `/v1/embeddings`' own `input` forms."""
    given = [name for name in ("texts", "images", "inputs") if getattr(body, name) is not None]
    if len(given) != 1:
        message = "give exactly one of texts, images or inputs" if given else "a value is required"
        raise ApiError(ErrorKind.INVALID_REQUEST, message, param="texts" if not given else given[1])
    if body.texts is not None:
        return "texts", list(body.texts)
    if body.images is not None:
        return "images", [{"type": "image_url", "image_url": {"url": image}} for image in body.images]
    assert body.inputs is not None
    for index, element in enumerate(body.inputs):
        if "content" not in element:
            raise ApiError(ErrorKind.INVALID_REQUEST, "a value is required", param=f"inputs[{index}].content")
    return "inputs", [{"content": element["content"]} for element in body.inputs]


def _priority_of(cohere_priority: int | None) -> Priority | None:
    """Cohere's integer priority (lower is sooner) in our two classes."""
    if cohere_priority is None:
        return None
    return "interactive" if cohere_priority == 0 else "bulk"


def _check_unsupported(body: CohereEmbedRequest) -> None:
    if body.truncate == "START":
        raise ApiError(
            ErrorKind.INVALID_REQUEST,
            "START is not supported: over-long inputs are shortened from the end (END) or refused (NONE)",
            param="truncate",
            code="unsupported_value",
        )
    if body.max_tokens is not None:
        raise ApiError(
            ErrorKind.INVALID_REQUEST,
            "is not supported: each input may use up to the model's MAX_LENGTH tokens; omit it",
            param="max_tokens",
            code="unsupported_value",
        )


@router.post("/v2/embed", responses=ERROR_RESPONSES, openapi_extra=openapi_body(CohereEmbedRequest))
async def cohere_embed(request: Request) -> Response:
    started = time.perf_counter()
    runtime = accepting(request)
    with runtime.admission.admit():  # before the body is read, as /v1/embeddings
        body = await read_json(request, runtime.settings, CohereEmbedRequest)
        _check_unsupported(body)
        field, raw_input = _input_of(body)
        service = runtime.service_for(body.model)
        forms = body.embedding_types or ["float"]
        try:
            options = service.options(
                dimensions=body.output_dimension,
                truncate=body.truncate != "NONE",
                input_type=body.input_type,
                precisions=precisions_of(forms),
                precisions_param="embedding_types",
                priority=request_priority(request, _priority_of(body.priority)),
            )
            answer = await run_embedding(request, service, raw_input, options)
        except ApiError as error:  # the service's field names, said in this request's words
            if error.param == "dimensions":
                error.param = "output_dimension"
            elif error.param is not None and error.param.startswith("input") and error.param != "input_type":
                error.param = field + error.param.removeprefix("input")
            raise
    payload = embed_by_type_response(
        answer.vectors,
        embedding_types=forms,
        compact=answer.compact,
        response_id=uuid.uuid4().hex,
        texts=body.texts,
        tokens=answer.tokens,
        images=len(body.images or []),
    )
    return Response(payload, media_type="application/json", headers=timing_headers(answer, started))
