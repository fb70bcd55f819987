"""OpenAI-shaped request and response models (what the OpenAPI schema shows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from embedding_api.items import Priority

PRIORITY_DESCRIPTION = (
    "interactive (default) or bulk: interactive work is batched first, bulk never waits more than BULK_MAX_WAIT_MS "
    "for a batch; wins over the X-Priority header."
)

# How a vector is written: float32 (as numbers or base64) or a compact form (`service/quantize.py`).
EncodingFormat = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`: OpenAI's fields plus `instruction` and `normalize`."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[Any] | dict[str, Any] = Field(
        description=(
            "A string, an array of strings, or items: {type: text|image|image_url|video|video_url, ...}, "
            "a fused array of parts, or {content: [parts], instruction}. One vector per top-level element."
        )
    )
    model: str | None = Field(None, description="Must be the served model's name; omitted = the served model.")
    encoding_format: EncodingFormat = Field(
        "float",
        description=(
            "float: JSON numbers; base64: little-endian float32 bytes; int8/uint8: JSON integers from per-dimension "
            "calibration ranges; binary/ubinary: one bit per dimension (x > 0) packed 8 to a byte, JSON integers."
        ),
    )
    embedding_types: list[EncodingFormat] | None = Field(
        None,
        min_length=1,
        description="Cohere-style: several forms at once; each item then has `embeddings: {type: vector}`.",
    )
    input_type: str | None = Field(
        None,
        description=(
            "query, document, classification or clustering (Cohere's search_query, search_document too): the "
            "model's instruction preset for it; an explicit instruction wins."
        ),
    )
    dimensions: int | None = Field(
        None, strict=True, description="Output size (1..model size): truncated, then re-normalised."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    instruction: str | None = Field(None, description="Task instruction for every item that carries none.")
    normalize: bool = Field(True, strict=True, description="L2-normalise the vectors.")
    truncate: bool = Field(
        True, strict=True, description="Shorten text over MAX_LENGTH tokens to fit; false: answer 400 instead."
    )
    priority: Priority | None = Field(None, description=PRIORITY_DESCRIPTION)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str | None = None
    embeddings: dict[str, list[float] | list[int] | str] | None = Field(
        None, description="With `embedding_types`: the vector in each form asked (instead of `embedding`)."
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedding_api"
    family: str | None = Field(None, description="qwen3_vl, qwen3_embedding, siglip, siglip2 or hidden_state.")
    dimension: int | None = Field(None, description="Length of the model's full vectors.")
    modalities: list[str] | None = Field(None, description="What one input may be: text, image, video.")
    matryoshka: bool | None = Field(None, description="Whether `dimensions` may cut its vectors.")
    quantization: dict[str, Any] | None = Field(
        None, description="Where int8/uint8 ranges come from: {source: builtin|file, samples}; null: none (no int8)."
    )
    input_types: dict[str, str] | None = Field(
        None, description="The instruction each `input_type` selects (absent: the model's default instruction)."
    )
    status: str = Field("ok", description="loading, ok or error.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# The error answers every embedding route documents in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 422, 500, 503, 504)
}
ERROR_RESPONSES[429] = {
    "model": ErrorResponse,
    "headers": {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait before retrying."}},
}


class ModelHealth(BaseModel):
    name: str
    status: Literal["ok", "loading", "error"]
    family: str | None
    device: str | None
    dimension: int | None
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "loading", "error", "draining"]
    model: str = Field(description="The model that answers requests naming none (the first one served).")
    model_path: str | None = Field(description="MODEL_PATH; null unless the request carries an API key.")
    device: str | None
    cuda_available: bool
    embedding_dimension: int | None
    max_image_width: int | None
    max_image_height: int | None
    detail: str | None = None
    random_weights: bool = Field(
        False, description="The checkpoint is randomly initialised (the demo): its vectors mean nothing."
    )
    note: str | None = Field(None, description="Something to know about what is served (e.g. random weights).")
    models: list[ModelHealth] = Field(default_factory=list, description="Every served model; 200 only when all are ok.")
