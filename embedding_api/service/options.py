"""One request's options, merged once: the request's own fields over the server's settings, checked against the
loaded model. Each rule about `dimensions`, `instruction`, `normalize` and `truncate` lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from embedding_api.catalog import INPUT_TYPES
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import DEFAULT_PRIORITY, Priority, blank_is_none
from embedding_api.service.quantize import PRECISIONS

# Cohere's names for our input types ("image" is Cohere's input type for images: embedded as documents).
INPUT_TYPE_ALIASES = {"search_query": "query", "search_document": "document", "image": "document"}
# Each family's instruction per input type, where the family takes instructions (None: the model's default).
# Qwen3-VL-Embedding: the recipe's retrieval instruction for queries; Qwen3-Embedding: its model card's `query`
# prompt (config_sentence_transformers.json), documents bare.
FAMILY_PRESETS: dict[str, dict[str, str]] = {
    "qwen3_vl": {"query": "Retrieve images or text relevant to the user's query."},
    "qwen3_embedding": {"query": "Given a web search query, retrieve relevant passages that answer the query"},
}


class DefaultsError(ValueError):
    """A server-wide default the loaded model cannot honour; the message is one sentence saying what to set."""


@dataclass(frozen=True)
class ServerDefaults:
    """What settings say for every request, checked once against the loaded model."""

    model_dimension: int
    dimensions: int | None = None  # EMBEDDING_DIMENSION; None: the model's full size
    presets: Mapping[str, str] = field(default_factory=dict)  # input type -> instruction (absent: model default)

    @classmethod
    def checked(
        cls,
        model_dimension: int,
        embedding_dimension: int | None,
        model_path: str,
        *,
        kind: str = "",
        takes_instructions: bool = False,
        input_types: Sequence[tuple[str, str]] = (),
    ) -> ServerDefaults:
        if embedding_dimension is not None and embedding_dimension > model_dimension:
            # Every request would be refused; the older project padded vectors up to this size, this server cuts.
            raise DefaultsError(
                f"EMBEDDING_DIMENSION={embedding_dimension} is more than the {model_dimension} dimensions of "
                f"MODEL_PATH={model_path}; set at most {model_dimension} or leave it empty."
            )
        return cls(model_dimension, embedding_dimension, input_type_presets(kind, takes_instructions, input_types))


def input_type_presets(
    kind: str, takes_instructions: bool, configured: Sequence[tuple[str, str]] = ()
) -> dict[str, str]:
    """The instruction each `input_type` selects: the model's own (`input_types` in MODELS_CONFIG) over the
    family's. A model that takes no instruction has none: every input type is then the model's one way to embed."""
    if not takes_instructions:
        if configured:
            raise DefaultsError(
                f"input_types are set for a {kind or 'model'} model, which takes no instruction; remove them."
            )
        return {}
    presets = dict(FAMILY_PRESETS.get(kind, {}))
    presets.update(configured)
    return {name: text for name, text in presets.items() if blank_is_none(text)}


def canonical_input_type(input_type: str | None) -> str | None:
    """query, document, classification or clustering (Cohere's search_query / search_document / image accepted);
    400 for anything else."""
    if input_type is None:
        return None
    name = INPUT_TYPE_ALIASES.get(input_type, input_type)
    if name not in INPUT_TYPES:
        known = ", ".join([*INPUT_TYPES, *INPUT_TYPE_ALIASES])
        raise ApiError(ErrorKind.INVALID_REQUEST, f"{input_type!r} is not one of {known}", param="input_type")
    return name


@dataclass(frozen=True)
class EmbeddingOptions:
    """How one request's vectors are made and finished."""

    instruction: str | None = None  # the request-level instruction (blank already None)
    dimensions: int | None = None  # the size to cut to; None: the model's full size, nothing to cut
    normalize: bool = True
    truncate: bool = True
    input_type: str | None = None  # canonical: query, document, classification, clustering
    preset: str | None = None  # the instruction `input_type` selects (below the input's and the request's own)
    precisions: tuple[str, ...] = ()  # compact forms wanted besides the float vectors: int8, uint8, binary, ubinary
    priority: Priority = DEFAULT_PRIORITY  # interactive items are batched before bulk ones (engine/priority.py)

    @classmethod
    def merged(
        cls,
        defaults: ServerDefaults,
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        input_type: str | None = None,
        precisions: Sequence[str] = (),
        priority: Priority = DEFAULT_PRIORITY,
    ) -> EmbeddingOptions:
        """The request's fields over the server's defaults; `dimensions` out of range is the caller's 400."""
        size = dimensions if dimensions is not None else defaults.dimensions
        if size is not None and not 1 <= size <= defaults.model_dimension:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"must be between 1 and {defaults.model_dimension} for this model, got {size}",
                param="dimensions",
            )
        full_size = size is None or size == defaults.model_dimension
        kind = canonical_input_type(input_type)
        unknown = [name for name in precisions if name not in PRECISIONS]
        if unknown:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"{unknown[0]!r} is not one of {', '.join(PRECISIONS)}",
                param="embedding_types",
            )
        return cls(
            instruction=blank_is_none(instruction),
            dimensions=None if full_size else size,
            normalize=normalize,
            truncate=truncate,
            input_type=kind,
            preset=defaults.presets.get(kind) if kind else None,
            precisions=tuple(dict.fromkeys(name for name in precisions if name != "float")),
            priority=priority,
        )
