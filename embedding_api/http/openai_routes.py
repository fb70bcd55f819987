"""The OpenAI surface: `POST /v1/embeddings` and `GET /v1/models`. Parse, call the service, encode the answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from embedding_api.http.body import openapi_body, read_json
from embedding_api.http.dispatch import run_embedding, runtime_of, service_of, timing_headers
from embedding_api.http.encoding import embeddings_response
from embedding_api.http.wire import ERROR_RESPONSES, EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList
from embedding_api.service.embeddings import check_served
from embedding_api.service.runtime import Runtime

router = APIRouter()
_STARTED = int(time.time())


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=openapi_body(EmbeddingRequest),
)
async def create_embeddings(request: Request) -> Response:
    started = time.perf_counter()
    service = service_of(request)
    with service.admission():  # before the body is read: a refused request costs no memory
        body = await read_json(request, service.settings, EmbeddingRequest)
        options = service.options(
            dimensions=body.dimensions, instruction=body.instruction, normalize=body.normalize, truncate=body.truncate
        )
        answer = await run_embedding(request, service, body.input, options, model=body.model)
    payload = embeddings_response(
        answer.vectors, encoding_format=body.encoding_format, model=service.model_name, prompt_tokens=answer.tokens
    )
    return Response(payload, media_type="application/json", headers=timing_headers(answer, started))


def _model_card(runtime: Runtime) -> ModelCard:
    return ModelCard(id=runtime.settings.model_name, created=_STARTED)


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model_card(runtime_of(request))])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model_id: str, request: Request) -> ModelCard:
    runtime = runtime_of(request)
    check_served(model_id, runtime.settings.model_name)
    return _model_card(runtime)
