"""The seed's simple routes (`/embed/text`, `/embed/texts`, `/embed/image`, `/embed/image/base64`).

Same engine, same auth, same error shape as `/v1/embeddings`: each builds the equivalent `/v1/embeddings`
request and runs it through the one service, so the vectors are identical.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.responses import Response
from starlette.types import Message

from embedding_api import __version__
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http.body import openapi_body, read_body, read_json
from embedding_api.http.dispatch import accepting, request_priority, run_embedding, runtime_of, timing_headers
from embedding_api.http.wire import ERROR_RESPONSES
from embedding_api.media.parse import is_url

router = APIRouter(tags=["simple"])


class TextBody(BaseModel):
    text: str = Field(description="One text.")


class TextsBody(BaseModel):
    texts: list[str] = Field(description="Several texts; one vector each, in order.")


class ImageBase64Body(BaseModel):
    image_base64: str = Field(description="An image as base64 or a data URI.")


class Embedding(BaseModel):
    embedding: list[float]
    dimension: int
    model: str
    version: str


class Embeddings(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    model: str
    version: str


_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            }
        },
    }
}


def _renamed(error: ApiError, param: str) -> ApiError:
    """Errors name this route's field (`text`, `texts[1]`, `file`) instead of `input[...]`."""
    if error.param is not None and error.param.startswith("input"):
        old = error.param
        error.param = param + old[len("input[0]") :] if param != "texts" else "texts" + old[len("input") :]
    return error


async def _vectors(
    request: Request, raw_input: Any, param: str, purpose: str
) -> tuple[np.ndarray, dict[str, str], str]:
    """This route's model's vectors for its input, with the server's default options. `purpose` (text or image)
    picks the model: TEXT_MODEL / IMAGE_MODEL, else the first served model that takes it."""
    started = time.perf_counter()
    runtime = runtime_of(request)
    setting = runtime.settings.text_model if purpose == "text" else runtime.settings.image_model
    service = runtime.service_for(runtime.name_for(purpose, setting))
    try:
        options = service.options(priority=request_priority(request, None))  # the X-Priority header only
        answer = await run_embedding(request, service, raw_input, options)
    except ApiError as error:
        raise _renamed(error, param) from None
    return answer.vectors, timing_headers(answer, started), service.model_name


def _answer(key: str, value: np.ndarray, model: str, headers: dict[str, str]) -> Response:
    content: dict[str, Any] = {key: value, "dimension": int(value.shape[-1]), "model": model, "version": __version__}
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json", headers=headers)


@router.post("/embed/text", response_model=Embedding, responses=ERROR_RESPONSES, openapi_extra=openapi_body(TextBody))
async def embed_text(request: Request) -> Response:
    runtime = accepting(request)
    with runtime.admission.admit():  # before the body is read, as /v1/embeddings
        body = await read_json(request, runtime.settings, TextBody)
        if not body.text:
            raise ApiError(ErrorKind.INVALID_REQUEST, "must not be empty", param="text")
        matrix, headers, model = await _vectors(request, body.text, "text", "text")
    return _answer("embedding", matrix[0], model, headers)


@router.post(
    "/embed/texts", response_model=Embeddings, responses=ERROR_RESPONSES, openapi_extra=openapi_body(TextsBody)
)
async def embed_texts(request: Request) -> Response:
    runtime = accepting(request)
    with runtime.admission.admit():
        body = await read_json(request, runtime.settings, TextsBody)
        if not body.texts:
            raise ApiError(ErrorKind.INVALID_REQUEST, "must not be empty", param="texts")
        matrix, headers, model = await _vectors(request, list(body.texts), "texts", "text")
    return _answer("embeddings", matrix, model, headers)


def _image_input(source: str) -> list[dict[str, str]]:
    return [{"type": "image", "data": source}]


@router.post(
    "/embed/image/base64",
    response_model=Embedding,
    responses=ERROR_RESPONSES,
    openapi_extra=openapi_body(ImageBase64Body),
)
async def embed_image_base64(request: Request) -> Response:
    runtime = accepting(request)
    with runtime.admission.admit():
        body = await read_json(request, runtime.settings, ImageBase64Body)
        if not body.image_base64:
            raise ApiError(ErrorKind.INVALID_REQUEST, "must not be empty", param="image_base64")
        if is_url(body.image_base64):
            raise ApiError(ErrorKind.INVALID_REQUEST, "must be base64 or a data URI, not a URL", param="image_base64")
        matrix, headers, model = await _vectors(request, _image_input(body.image_base64), "image_base64", "image")
    return _answer("embedding", matrix[0], model, headers)


async def _uploaded_file(request: Request) -> bytes:
    """The `file` field of a multipart upload, the whole body capped at MAX_REQUEST_BYTES."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(
            ErrorKind.INVALID_REQUEST, "send the image as multipart/form-data in a field named 'file'", param="file"
        )
    settings = runtime_of(request).settings
    raw = bytes(await read_body(request, settings.max_request_bytes, settings.body_read_timeout))
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception:  # malformed multipart (bad boundary, too many parts)
        raise ApiError(ErrorKind.INVALID_REQUEST, "the multipart body could not be parsed", param="file") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(ErrorKind.INVALID_REQUEST, "a multipart file field is required", param="file")
        data = await upload.read()
    finally:
        await form.close()
    if not data:
        raise ApiError(ErrorKind.INVALID_REQUEST, "the uploaded file is empty", param="file")
    return data


@router.post("/embed/image", response_model=Embedding, responses=ERROR_RESPONSES, openapi_extra=_MULTIPART_BODY)
async def embed_image(request: Request) -> Response:
    with accepting(request).admission.admit():
        data = await _uploaded_file(request)
        source = base64.b64encode(data).decode("ascii")
        matrix, headers, model = await _vectors(request, _image_input(source), "file", "image")
    return _answer("embedding", matrix[0], model, headers)
