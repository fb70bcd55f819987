"""The OpenAI surface: `POST /v1/embeddings` and `GET /v1/models`. Parse, call the service, encode the answer."""

from __future__ import annotations

import asyncio
import functools
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from embedding_api.http.body import openapi_body, read_json
from embedding_api.http.dispatch import accepting, request_priority, run_embedding, runtime_of, timing_headers
from embedding_api.http.encoding import embeddings_response, precisions_of
from embedding_api.http.wire import ERROR_RESPONSES, EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList
from embedding_api.service.runtime import ServedModel

router = APIRouter()
_ENCODE_ON_LOOP = 256  # vectors written on the event loop itself; more go to a thread
_STARTED = int(time.time())


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=openapi_body(EmbeddingRequest),
)
async def create_embeddings(request: Request) -> Response:
    started = time.perf_counter()
    runtime = accepting(request)
    with runtime.admission.admit():  # before the body is read: a refused request costs no memory
        body = await read_json(request, runtime.settings, EmbeddingRequest)
        service = runtime.service_for(body.model)
        forms = body.embedding_types or [body.encoding_format]
        options = service.options(
            dimensions=body.dimensions,
            instruction=body.instruction,
            normalize=body.normalize,
            truncate=body.truncate,
            input_type=body.input_type,
            precisions=precisions_of(forms),
            precisions_param="embedding_types" if body.embedding_types else "encoding_format",
            priority=request_priority(request, body.priority),
        )
        answer = await run_embedding(request, service, body.input, options)
    encode = functools.partial(
        embeddings_response,
        answer.vectors,
        encoding_format=body.encoding_format,
        model=service.model_name,
        prompt_tokens=answer.tokens,
        compact=answer.compact,
        embedding_types=body.embedding_types,
    )
    # Thousands of vectors take tens of milliseconds to write: off the event loop, so other requests' answers and
    # dispatch keep going meanwhile (the writing thread yields the interpreter at every switch interval).
    payload = await asyncio.to_thread(encode) if len(answer.vectors) > _ENCODE_ON_LOOP else encode()
    return Response(payload, media_type="application/json", headers=timing_headers(answer, started))


def _model_card(model: ServedModel) -> ModelCard:
    family, service = model.family, model.service
    return ModelCard(
        id=model.name,
        created=_STARTED,
        family=family.kind if family else None,
        dimension=family.dimension if family else None,
        modalities=sorted(family.modalities - {"fused"}) if family else None,
        matryoshka=family.matryoshka if family else None,
        quantization=service.calibration.describe() if service and service.calibration else None,
        input_types=dict(service.defaults.presets) if service and service.defaults.presets else None,
        status=model.status,
    )


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model_card(model) for model in runtime_of(request).models])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _model_card(runtime_of(request).served(model_id))
