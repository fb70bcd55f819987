"""Request bodies: read bounded in size and time, parsed as JSON whatever the Content-Type (curl -d sends form
encoding), with OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.settings import Settings

Model = TypeVar("Model", bound=BaseModel)
THREAD_PARSE_BYTES = 1024 * 1024  # bodies above this are parsed in a worker thread
_SCAN_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[list(b",:[{")] = True


_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
# pydantic's type errors, said in JSON's words.
_EXPECTED = {
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
}


def param_of(location: tuple[Any, ...]) -> str | None:
    """pydantic's error location in our request's own words: `dimensions`, `input[3]`, `texts[1]`.

    The request models are flat (a field, then list indexes), so after the field name only the indexes are kept:
    the other strings are pydantic's union branch labels (`input.str`, `input.list[any]`), no name of ours.
    """
    parts = list(location[1:] if location and location[0] in _SOURCES else location)
    if not parts:
        return None
    return str(parts[0]) + "".join(f"[{part}]" for part in parts[1:] if isinstance(part, int))


def validation_error(errors: list[Any]) -> ApiError:
    first = errors[0] if errors else {}
    param = param_of(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return ApiError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON")
    if first.get("type") == "missing":
        return ApiError(ErrorKind.INVALID_REQUEST, "a value is required", param=param)
    # A union's branches fail together (`input` is a string, an array or an object): say them in one message.
    same = [error for error in errors if param_of(tuple(error.get("loc", ()))) == param]
    expected = [_EXPECTED.get(str(error.get("type"))) for error in same]
    if param and all(expected):
        choices = list(dict.fromkeys(str(choice) for choice in expected))
        wanted = choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]
        return ApiError(ErrorKind.INVALID_REQUEST, f"must be {wanted}", param=param)
    message = str(first.get("msg", "invalid request"))
    return ApiError(ErrorKind.INVALID_REQUEST, message, param=param)


def count_json_values(raw: bytes | bytearray, limit: int | None = None) -> int:
    """How many `,` `:` `[` `{` stand outside strings: an upper bound on the JSON values and keys orjson would build.

    Vectorised (numpy releases the GIL): 64 MB in about 0.3 s. A quote is a string's edge unless an odd run of
    backslashes precedes it; a backslash outside a string is invalid JSON, refused by the parser at that point, so the
    count before it is exact. Stops early once past `limit`.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    total = parity = run = 0  # run: backslashes ending the previous chunk
    for start in range(0, len(data), _SCAN_CHUNK):
        chunk = data[start : start + _SCAN_CHUNK]
        backslash = chunk == _BACKSLASH
        quotes = chunk == _QUOTE
        if run or backslash.any():
            index = np.arange(len(chunk), dtype=np.int32)
            last_other = np.where(backslash, np.int32(-1 - run), index)
            np.maximum.accumulate(last_other, out=last_other)
            run_length = index - last_other  # backslashes ending at each position
            escaped = np.empty(len(chunk), dtype=bool)
            escaped[0] = run & 1
            np.bitwise_and(run_length[:-1], 1, out=escaped[1:], casting="unsafe")
            quotes &= ~escaped
            run = int(run_length[-1])
        edges = np.cumsum(quotes, dtype=np.int32)
        if parity:
            edges += 1
        total += int(np.count_nonzero(_STRUCTURAL[chunk] & ((edges & 1) == 0)))
        parity = int(edges[-1] & 1)
        if limit is not None and total > limit:
            break
    return total


def parse_body(raw: bytes | bytearray, model: type[Model], max_values: int | None = None) -> Model:
    """The body as `model`; past `max_values` JSON values (counted first, cheaply) a 413 before anything is built."""
    if max_values is not None and len(raw) > max_values and count_json_values(raw, max_values) > max_values:
        raise ApiError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"the request body holds more than MAX_JSON_VALUES={max_values} JSON values; split it into several requests",
        )
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


async def parse_body_off_loop(raw: bytes | bytearray, model: type[Model], max_values: int | None = None) -> Model:
    """`parse_body`, in a worker thread when the body is over THREAD_PARSE_BYTES so the event loop keeps serving.

    orjson and pydantic hold the GIL while they run, so a thread alone would not keep the loop free from a body of
    millions of tiny values; the count above (which releases the GIL) refuses those before they are parsed.
    """
    if len(raw) <= THREAD_PARSE_BYTES:
        return parse_body(raw, model, max_values)
    return await asyncio.to_thread(parse_body, raw, model, max_values)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents a body we parse by hand."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def read_body(request: Request, limit: int, timeout: float) -> bytearray:
    """The body, refused with 413 as soon as it passes `limit` (Content-Length checked first), 408 past `timeout`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise _too_large(limit)
                body += chunk
    except TimeoutError:
        raise ApiError(
            ErrorKind.REQUEST_TIMEOUT,
            f"the request body did not arrive within BODY_READ_TIMEOUT={timeout:g} s",
            code="body_timeout",
        ) from None
    return body


async def read_json(request: Request, settings: Settings, model: type[Model]) -> Model:
    """The body read (bounded in size and time) and parsed (off the event loop when big) as `model`."""
    raw = await read_body(request, settings.max_request_bytes, settings.body_read_timeout)
    return await parse_body_off_loop(raw, model, settings.max_json_values)


def _too_large(limit: int) -> ApiError:
    return ApiError(ErrorKind.PAYLOAD_TOO_LARGE, f"the request body is over MAX_REQUEST_BYTES={limit}")
