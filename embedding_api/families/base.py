"""The seam between the engine and a model family.

A family turns items into vectors in three verbs: `prepare` (CPU: resize, template, tokenise; per item, then
`collate` per batch), `run` (device: forward pass and pooling, one copy back to the host) and `finish` (host:
MRL truncation and normalisation). The engine knows only this protocol, so other families (text-only embedders,
SigLIP-style dual encoders) plug in without touching the engine or the HTTP layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embedding_api.items import Item


class FramePicker(Protocol):
    """Which frames of a video a model sees: positions in a frame list, source indices in a file."""

    def list_positions(self, count: int) -> list[int]: ...

    def file_indices(self, total: int, fps: float) -> list[int]: ...


@dataclass
class PreparedItem:
    """An item after per-item CPU work, with the cost the batcher budgets by."""

    payload: Any
    tokens: int
    pixels: int = 0
    modalities: tuple[str, ...] = ()
    # Items with the same key begin with the same `shared_tokens` tokens, which a packed batch computes once (a
    # reranker's judge prompt and query; an embedder's template and instruction). None: nothing to share.
    shared_prefix: str | None = None
    shared_tokens: int = 0


@dataclass(frozen=True)
class Span:
    """One sequence of a packed row: its own tokens [start, end) of the row, continuing the `context` ranges (earlier
    tokens of the row equal to its first ones: a prefix it shares with an earlier sequence, computed once)."""

    start: int
    end: int
    context: tuple[tuple[int, int], ...] = ()

    @property
    def context_length(self) -> int:
        return sum(end - start for start, end in self.context)


@dataclass
class Batch:
    """Device-ready inputs for several prepared items."""

    tensors: dict[str, Any]
    token_counts: list[int]  # each item's full length, shared prefix included (what it costs a request)
    spans: list[Span] | None = None  # one packed row: where each item's tokens are (None: padded rows)


class EmbeddingFamily(Protocol):
    """What the engine needs from a model family."""

    kind: str  # the family's name: qwen3_vl, qwen3_embedding, siglip, siglip2, hidden_state, qwen3_vl_reranker
    task: str  # embed, or rerank (pairs in, one score each)
    modalities: frozenset[str]  # what one input may hold: text, image, video, and fused (several parts)
    takes_instructions: bool  # an instruction changes the vector
    matryoshka: bool  # trained so that leading dimensions stand alone: `dimensions` allowed
    dimension: int
    device: str
    dtype: str
    packs_sequences: bool  # a batch costs its real tokens (padding-free), not its longest item x its size
    frame_picker: FramePicker  # which video frames the model sees: media fetches and decodes only those

    def prepare(self, item: Item) -> PreparedItem:
        """CPU, per item: validate, resize, render the prompt, count tokens. Raises ApiError for bad input."""
        ...

    def collate(self, items: list[PreparedItem]) -> Batch:
        """CPU, per batch: pad and tensorise."""
        ...

    def run(self, batch: Batch) -> np.ndarray:
        """Device: forward pass and pooling; returns float32 (n, dimension) on the host."""
        ...

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        """Host: truncate and normalise pooled vectors."""
        ...


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    normalized: np.ndarray = matrix / np.maximum(norms, 1e-12)
    return normalized


def finish_vectors(pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation: normalise, keep the first `dimensions` (None: all; `service.options` decides), normalise
    again."""
    vectors = pooled.astype(np.float32, copy=False)
    if normalize:
        vectors = l2_normalize(vectors)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
        if normalize:
            vectors = l2_normalize(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)
