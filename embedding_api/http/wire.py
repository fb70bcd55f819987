"""OpenAI-shaped request and response models (what the OpenAPI schema shows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes."
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


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


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
