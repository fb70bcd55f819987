"""One request's options, merged once: the request's own fields over the server's settings, checked against the
loaded model. Each rule about `dimensions`, `instruction`, `normalize` and `truncate` lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import blank_is_none


class DefaultsError(ValueError):
    """A server-wide default the loaded model cannot honour; the message is one sentence saying what to set."""


@dataclass(frozen=True)
class ServerDefaults:
    """What settings say for every request, checked once against the loaded model."""

    model_dimension: int
    dimensions: int | None = None  # EMBEDDING_DIMENSION; None: the model's full size

    @classmethod
    def checked(cls, model_dimension: int, embedding_dimension: int | None, model_path: str) -> ServerDefaults:
        if embedding_dimension is not None and embedding_dimension > model_dimension:
            # Every request would be refused; the older project padded vectors up to this size, this server cuts.
            raise DefaultsError(
                f"EMBEDDING_DIMENSION={embedding_dimension} is more than the {model_dimension} dimensions of "
                f"MODEL_PATH={model_path}; set at most {model_dimension} or leave it empty."
            )
        return cls(model_dimension, embedding_dimension)


@dataclass(frozen=True)
class EmbeddingOptions:
    """How one request's vectors are made and finished."""

    instruction: str | None = None  # the request-level instruction (blank already None)
    dimensions: int | None = None  # the size to cut to; None: the model's full size, nothing to cut
    normalize: bool = True
    truncate: bool = True

    @classmethod
    def merged(
        cls,
        defaults: ServerDefaults,
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
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
        return cls(
            instruction=blank_is_none(instruction),
            dimensions=None if full_size else size,
            normalize=normalize,
            truncate=truncate,
        )
