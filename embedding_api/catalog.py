"""Which models this server serves, each with its options: from MODELS_CONFIG (a TOML file), else MODELS
(`name=path` pairs), else MODEL_NAME / MODEL_PATH. Server-wide settings are every model's defaults.

A TOML file lists one table per model, in serving order (the first answers requests that name no model):

    [[models]]
    name = "Qwen3-VL-Embedding-2B"
    path = "models/Qwen3-VL-Embedding-2B"

    [[models]]
    name = "qwen3-text"
    path = "models/Qwen3-Embedding-0.6B"
    device = "cpu"
    max_batch_tokens = 4096
    default_instruction = "Given a web search query, retrieve relevant passages that answer the query"
    calibration = "calibration/qwen3-text.npy"   # int8/uint8 ranges (else: the built-in calibration set)

    [models.input_types]                         # `input_type` -> instruction, over the family's presets
    query = "Given a web search query, retrieve relevant passages that answer the query"
    classification = "Classify the sentiment of the given review"

    [[models]]
    name = "zimage-text"
    path = "models/Z-Image-Turbo/text_encoder"
    family = "hidden_state"
    layer = -2
    pooling = "mean"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from embedding_api.settings import Settings

FAMILIES = ("qwen3_vl", "qwen3_embedding", "siglip", "hidden_state", "qwen3_vl_reranker", "qwen3_reranker")
_OPTIONS = frozenset(
    {
        "family",
        "device",
        "dtype",
        "default_instruction",
        "embedding_dimension",
        "max_length",
        "max_batch_tokens",
        "max_batch_pixels",
        "max_batch_size",
        "layer",
        "pooling",
        "text_length",
        "calibration",
        "input_types",
    }
)
# What `input_type` may name (Cohere's search_query / search_document are aliases, `service.options`).
INPUT_TYPES = ("query", "document", "classification", "clustering")


class CatalogError(ValueError):
    """The model list cannot be used; the message is one sentence naming the setting to fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name in requests, where its weights are, and its own options."""

    name: str
    path: str
    family: str | None = None  # forced family; None: detected from the checkpoint
    device: str | None = None  # None: DEVICE
    dtype: str | None = None  # None: DTYPE
    default_instruction: str | None = None  # None: the family's default (DEFAULT_INSTRUCTION for Qwen3-VL)
    embedding_dimension: int | None = None  # None: EMBEDDING_DIMENSION
    max_length: int | None = None  # None: MAX_LENGTH
    max_batch_tokens: int | None = None
    max_batch_pixels: int | None = None
    max_batch_size: int | None = None
    layer: int = -2  # hidden-state embedder: which hidden state
    pooling: Literal["mean", "last"] = "mean"  # hidden-state embedder: how tokens become one vector
    text_length: int = 64  # SigLIP: texts are padded to this many tokens
    calibration: str | None = None  # int8/uint8 ranges: a .npy of embeddings or (2, dim) ranges; None: built-in set
    input_types: tuple[tuple[str, str], ...] = ()  # instruction per `input_type` over the family's presets


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The models to serve, in order; raises CatalogError with the setting to fix."""
    if settings.models_config:
        specs = _from_toml(Path(settings.models_config))
    elif settings.models.strip():
        specs = _from_pairs(settings.models)
    else:
        specs = [ModelSpec(name=settings.model_name, path=settings.model_path)]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CatalogError(f"the model name {duplicates[0]!r} is given twice; each served model needs its own name")
    return specs


def _from_pairs(value: str) -> list[ModelSpec]:
    specs = []
    for pair in value.split(","):
        name, sep, path = pair.strip().partition("=")
        if not sep or not name.strip() or not path.strip():
            raise CatalogError(f"MODELS: {pair.strip()!r} is not name=path; write e.g. MODELS=qwen=models/Qwen3-VL")
        specs.append(ModelSpec(name=name.strip(), path=path.strip()))
    return specs


def _from_toml(path: Path) -> list[ModelSpec]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise CatalogError(f"MODELS_CONFIG={path} cannot be read ({exc.strerror or exc}); fix the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"MODELS_CONFIG={path} is not valid TOML ({exc})") from None
    tables = document.get("models")
    if not isinstance(tables, list) or not tables:
        raise CatalogError(f"MODELS_CONFIG={path} lists no [[models]] tables")
    return [_spec_of(table, path, index) for index, table in enumerate(tables)]


def _spec_of(table: Any, path: Path, index: int) -> ModelSpec:
    where = f"MODELS_CONFIG={path}, model {index + 1}"
    if not isinstance(table, dict) or not isinstance(table.get("name"), str) or not isinstance(table.get("path"), str):
        raise CatalogError(f"{where}: needs a `name` and a `path` (strings)")
    unknown = sorted(set(table) - _OPTIONS - {"name", "path"})
    if unknown:
        raise CatalogError(f"{where}: unknown option {unknown[0]!r}; known: {', '.join(sorted(_OPTIONS))}")
    family = table.get("family")
    if family is not None and family not in FAMILIES:
        raise CatalogError(f"{where}: family {family!r} is not one of {', '.join(FAMILIES)}")
    pooling = table.get("pooling", "mean")
    if pooling not in ("mean", "last"):
        raise CatalogError(f"{where}: pooling must be 'mean' or 'last', not {pooling!r}")
    options = {key: value for key, value in table.items() if key in _OPTIONS}
    if "input_types" in options:
        options["input_types"] = _input_types(options["input_types"], where)
    try:
        return ModelSpec(name=table["name"], path=table["path"], **options)
    except TypeError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def _input_types(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """`[models.input_types]`: a table of input type -> instruction."""
    if not isinstance(value, dict) or not all(isinstance(text, str) for text in value.values()):
        raise CatalogError(f'{where}: input_types must be a table of strings, e.g. query = "..."')
    unknown = sorted(set(value) - set(INPUT_TYPES))
    if unknown:
        raise CatalogError(f"{where}: input_types: unknown {unknown[0]!r}; known: {', '.join(INPUT_TYPES)}")
    return tuple(sorted(value.items()))
