"""What goes on the wire: vectors without Python float lists, and JSON responses written with orjson.

Forms: `float` (JSON numbers), `base64` (little-endian float32 bytes, as OpenAI and Cohere define it), and the compact
forms `service/quantize.py` makes (int8, uint8, binary, ubinary), written as JSON integers (Cohere's shape)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

_LITTLE_ENDIAN_F32 = np.dtype("<f4")


def to_base64(vector: np.ndarray) -> str:
    """Base64 of the little-endian float32 bytes, as the OpenAI SDK decodes it."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype=_LITTLE_ENDIAN_F32).tobytes()).decode("ascii")


def precisions_of(forms: Sequence[str]) -> list[str]:
    """The service's precision for each wire form (base64 is float32 too)."""
    return ["float" if form == "base64" else form for form in forms]


def encoded(form: str, vectors: np.ndarray, compact: Mapping[str, np.ndarray]) -> Any:
    """A request's vectors in one form: a float32 matrix or an integer matrix (orjson writes either as nested
    lists), or base64 strings."""
    if form == "float":
        return vectors
    if form == "base64":
        return [to_base64(row) for row in vectors]
    return compact[form]


def embeddings_response(
    vectors: np.ndarray,
    *,
    encoding_format: str,
    model: str,
    prompt_tokens: int,
    compact: Mapping[str, np.ndarray] | None = None,
    embedding_types: Sequence[str] | None = None,
) -> bytes:
    """The whole OpenAI embeddings response as JSON bytes; with `embedding_types`, each item's `embeddings` holds
    its vector in every form asked, keyed by form."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    compact = compact or {}
    data: list[dict[str, Any]] = []
    if embedding_types:
        columns = {form: encoded(form, matrix, compact) for form in dict.fromkeys(embedding_types)}
        for index in range(len(matrix)):
            forms = {form: column[index] for form, column in columns.items()}
            data.append({"object": "embedding", "index": index, "embeddings": forms})
    else:
        column = encoded(encoding_format, matrix, compact)
        for index in range(len(matrix)):
            data.append({"object": "embedding", "index": index, "embedding": column[index]})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    # orjson writes numpy float32 rows directly (shortest round-trip repr), no float lists in between.
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def embed_by_type_response(
    vectors: np.ndarray,
    *,
    embedding_types: Sequence[str],
    compact: Mapping[str, np.ndarray],
    response_id: str,
    texts: list[str] | None,
    tokens: int,
    images: int,
) -> bytes:
    """Cohere's v2 embed answer (`EmbedByTypeResponse`): the vectors by form, the texts echoed, billed units."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    billed: dict[str, int] = {"input_tokens": tokens}
    if images:
        billed["images"] = images
    body: dict[str, Any] = {
        "id": response_id,
        "response_type": "embeddings_by_type",
        "embeddings": {form: encoded(form, matrix, compact) for form in dict.fromkeys(embedding_types)},
        "meta": {"api_version": {"version": "2"}, "billed_units": billed},
    }
    if texts is not None:
        body["texts"] = texts
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
