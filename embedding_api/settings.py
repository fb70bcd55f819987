"""The one settings class: read from the environment and `.env`."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_PATH = "Qwen/Qwen3-VL-Embedding-2B"
DEFAULT_INSTRUCTION = "Represent the user's input."
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical"}
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_SECRET_SETTINGS = frozenset({"api_key"})


class Settings(BaseSettings):
    """Every knob of the server; each has a default and a one-line description."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Server
    api_key: str = Field("", description="API key, or several separated by commas; empty turns auth off.")
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(6008, ge=1, le=65535, description="Port to listen on.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level: debug, info, warning, error or critical (any case)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people, json (one object a line) for machines."
    )
    metrics_require_key: bool = Field(False, description="Put GET /metrics behind the API key (public by default).")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and headers; then 408 and close."
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="Largest request line plus headers (bytes); past it, 431 and close."
    )
    max_connections: int | None = Field(
        None, ge=16, description="Most open client connections; empty = auto (the file limit minus 256)."
    )

    # Model
    model_name: str = Field("Qwen3-VL-Embedding-2B", description="The model name clients must send.")
    model_path: str = Field(DEFAULT_MODEL_PATH, description="A local folder with the weights, or a hub id.")
    models: str = Field(
        "", description="Several models as name=path pairs separated by commas; empty = MODEL_NAME/MODEL_PATH alone."
    )
    models_config: str | None = Field(
        None, description="A TOML file listing the models with per-model options (see README); wins over MODELS."
    )
    text_model: str | None = Field(None, description="Model behind /embed/text(s); empty = the first that takes text.")
    image_model: str | None = Field(
        None, description="Model behind /embed/image*; empty = the first that takes images."
    )
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU."
    )
    cpu_kernels: Literal["compiled", "pytorch"] = Field(
        "compiled",
        description="CPU models' attention and norms: compiled on first start (else PyTorch's), or pytorch.",
    )
    embedding_dimension: int | None = Field(
        None, ge=1, description="Default output size; empty = the model's own (read from its config)."
    )
    max_length: int = Field(8192, ge=16, description="Most tokens per input; longer text is shortened to fit.")
    min_pixels: int = Field(4 * 32 * 32, ge=1, description="Smallest image area after resizing (pixels).")
    max_pixels: int = Field(1800 * 32 * 32, ge=1, description="Largest image area after resizing (pixels).")
    max_image_size: int | None = Field(
        None, ge=32, description="Optional cap on an image's longer side before resizing (off = reference vectors)."
    )
    max_image_width: int | None = Field(None, ge=32, description="Optional cap on image width (off by default).")
    max_image_height: int | None = Field(None, ge=32, description="Optional cap on image height (off by default).")
    default_instruction: str = Field(DEFAULT_INSTRUCTION, description="Instruction used when a request gives none.")
    quantization_calibration: str | None = Field(
        None, description="A .npy file of embeddings (or (2, dim) ranges) for int8/uint8, for models that name none."
    )
    builtin_calibration: bool = Field(
        True, description="Embed the built-in calibration texts at start-up for int8/uint8 ranges (else: no int8)."
    )

    # Limits
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body (bytes); past it, 413.")
    body_read_timeout: float = Field(
        120.0, gt=0, description="Seconds to receive a whole request body once reading starts; past it, 408."
    )
    max_json_values: int = Field(
        1_000_000,
        ge=1000,
        description="Most JSON values and keys in one request body, counted before parsing; past it, 413.",
    )
    max_inputs_per_request: int = Field(2048, ge=1, description="Most items in one request's `input`.")
    max_text_chars: int = Field(1_000_000, ge=1, description="Longest single text (characters); past it, 400.")
    max_rerank_documents: int = Field(1000, ge=1, description="Most documents in one rerank request; past it, 400.")
    max_tokens_per_request: int = Field(
        300_000, ge=1, description="Most tokens in one request (after truncation); past it, 400."
    )
    request_timeout: float = Field(
        300.0, gt=0, description="Seconds a request may take; its queued items are dropped then."
    )
    shutdown_timeout: float = Field(30.0, gt=0, description="Seconds to finish in-flight requests after SIGTERM.")
    image_fetch_timeout: float = Field(10.0, gt=0, description="Seconds allowed to download one image or video.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest image or video download (bytes).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image (width x height) decoded; read from the header first."
    )
    max_video_frames: int = Field(
        64,
        ge=2,
        description="Most frames the model sees of one video (the official code takes up to 64; more is capped at 64).",
    )
    max_redirects: int = Field(
        3, ge=0, description="Most redirects followed for one media URL (each hop checked again)."
    )
    allowed_media_domains: str = Field(
        "", description="Comma list of hosts media URLs may use (and their subdomains); empty = any public host."
    )
    allow_private_media_urls: bool = Field(
        False, description="Let media URLs reach private, loopback and link-local addresses."
    )
    allowed_local_media_path: str = Field(
        "", description="Folder file:// media URLs may read below; empty = file:// refused."
    )
    max_parts_per_item: int = Field(
        256, ge=1, description="Most parts (texts, images, videos) in one fused input; past it, 400."
    )
    max_instruction_chars: int = Field(
        8192, ge=1, description="Longest instruction (characters), per input or per request; past it, 400."
    )
    max_request_pixels: int = Field(
        200_000_000,
        ge=1,
        description="Most decoded image pixels one request may hold (images and frame-list frames); past it, 400.",
    )
    max_media_per_item: int = Field(
        256, ge=1, description="Most media references (images, video URLs, video frames) in one input; past it, 400."
    )
    max_media_per_request: int = Field(
        2048, ge=1, description="Most media references in one request, over all its inputs; past it, 400."
    )
    max_concurrent_fetches: int = Field(
        64, ge=1, description="Most media downloads in flight at once, over all requests (shared fairly)."
    )
    max_fetches_per_request: int = Field(
        8, ge=1, description="Most media downloads in flight for one request (keep well below the total)."
    )

    # Batching
    max_batch_tokens: int | None = Field(
        None,
        ge=64,
        description="Token budget of one forward pass; empty = auto (2,048 real tokens on CPU, 16,384 on CUDA).",
    )
    max_batch_pixels: int | None = Field(
        None,
        ge=4096,
        description="Pixel budget of one forward pass; empty = auto (2,097,152 on CPU, 16,777,216 on CUDA).",
    )
    max_batch_size: int = Field(64, ge=1, description="Most items in one forward pass.")
    max_queued_items: int = Field(8192, ge=1, description="Most items waiting for the device; past it, 429.")
    bulk_max_wait_ms: float = Field(
        2000.0, gt=0, description="Bulk work waits at most this long (ms) behind interactive work before a batch."
    )
    max_concurrent_requests: int = Field(512, ge=1, description="Most embedding requests in progress; past it, 429.")

    @field_validator(
        "embedding_dimension",
        "max_batch_tokens",
        "max_batch_pixels",
        "max_connections",
        "max_image_size",
        "models_config",
        "text_model",
        "image_model",
        "max_image_width",
        "max_image_height",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case_level(cls, value: object) -> object:
        """`INFO`, `Warning`, `warn`, `FATAL`: every name the logging module knows, in any case."""
        if not isinstance(value, str):
            return value
        level = value.strip().lower()
        return _LEVEL_ALIASES.get(level, level)

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        device = value.strip().lower()
        if not _DEVICE_PATTERN.fullmatch(device):
            raise ValueError("must be auto, cpu, cuda or cuda:N (N the GPU's index)")
        return device

    @field_validator("api_key")
    @classmethod
    def _no_blank_keys(cls, value: str) -> str:
        if value and not value.replace(",", "").strip():
            raise ValueError(
                "holds only blanks and commas, which would silently turn authentication off: "
                "set a key, or leave API_KEY empty to run without one"
            )
        return value

    @cached_property
    def api_keys(self) -> tuple[str, ...]:
        """The configured keys, blanks dropped."""
        return tuple(key.strip() for key in self.api_key.split(",") if key.strip())


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting, named as in `.env` (`PORT`), without pydantic's URLs; keys never echoed."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]).upper() or "SETTINGS"
        message = str(error.get("ctx", {}).get("error", "")) if error["type"] == "value_error" else error["msg"]
        lines.append(f"{name}: {message or error['msg']}{_shown_value(error)}")
    return lines


def _shown_value(error: Any) -> str:
    if error["type"] == "missing" or not error["loc"] or str(error["loc"][0]) in _SECRET_SETTINGS:
        return ""
    value = error.get("input")
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f" (got {text})"
