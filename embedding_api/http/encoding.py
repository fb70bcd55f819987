"""What goes on the wire: vectors without Python float lists, and JSON responses written with orjson."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

_LITTLE_ENDIAN_F32 = np.dtype("<f4")


def to_base64(vector: np.ndarray) -> str:
    """Base64 of the little-endian float32 bytes, as the OpenAI SDK decodes it."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype=_LITTLE_ENDIAN_F32).tobytes()).decode("ascii")


def embeddings_response(vectors: np.ndarray, *, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The whole OpenAI embeddings response as JSON bytes."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    data: list[dict[str, Any]] = []
    for index, row in enumerate(matrix):
        embedding: Any = to_base64(row) if encoding_format == "base64" else row
        data.append({"object": "embedding", "index": index, "embedding": embedding})
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
