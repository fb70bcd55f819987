"""JSON bodies parsed whatever the Content-Type (curl -d sends form encoding), with OpenAI-shaped errors."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from embedding_api.errors import ApiError, ErrorKind

Model = TypeVar("Model", bound=BaseModel)


def param_of(location: tuple[Any, ...]) -> str | None:
    """pydantic's error location as a dotted path, e.g. `dimensions` or `input.0`."""
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or None


def validation_error(errors: list[Any]) -> ApiError:
    first = errors[0] if errors else {}
    param = param_of(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return ApiError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON")
    if first.get("type") == "missing":
        return ApiError(ErrorKind.INVALID_REQUEST, f"{param} is required", param=param)
    message = str(first.get("msg", "invalid request"))
    return ApiError(ErrorKind.INVALID_REQUEST, f"{param}: {message}" if param else message, param=param)


def parse_body(raw: bytes, model: type[Model]) -> Model:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(ErrorKind.INVALID_REQUEST, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents a body we parse by hand."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
