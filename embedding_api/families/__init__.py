"""Model families: one adapter per family behind the `EmbeddingFamily` protocol."""

from embedding_api.families.base import Batch, EmbeddingFamily, PreparedItem, finish_vectors

__all__ = ["Batch", "EmbeddingFamily", "PreparedItem", "finish_vectors"]
