"""Stand-ins shared by the test modules: families, an engine, resolvers (media and DNS) and loaders.

Test modules import these from here, never from one another.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embedding_api.engine.batcher import EmbedResult
from embedding_api.errors import ApiError
from embedding_api.families.base import Batch, EmbeddingFamily, PreparedItem, finish_vectors
from embedding_api.items import Item
from embedding_api.media.parse import ItemSpec

# ---- families ---------------------------------------------------------------------------------------------------


class RecordingFamily:
    """Wraps the real adapter, records batch sizes, and can fail batches on demand.

    Attributes it does not set itself (device, dtype, dimension, ...) are the wrapped adapter's. Batches are costed
    padded (`packs_sequences = False`) whatever the wrapped adapter does, so budgets count longest x size.
    """

    packs_sequences = False

    def __init__(self, inner: EmbeddingFamily, *, oom_above: int | None = None, gate: threading.Event | None = None):
        self.inner = inner
        self.oom_above = oom_above
        self.gate = gate
        self.batch_sizes: list[int] = []
        self.poison: set[str] = set()
        self._texts: dict[int, list[str]] = {}  # id(batch) -> the prompts of its items, from collate to run

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, item: Item) -> PreparedItem:
        return self.inner.prepare(item)

    def collate(self, items: list[PreparedItem]) -> Batch:
        batch = self.inner.collate(items)
        self._texts[id(batch)] = [str(getattr(item.payload, "text", "")) for item in items]
        return batch

    def run(self, batch: Batch) -> np.ndarray:
        texts = self._texts.pop(id(batch), [])
        if self.gate is not None:
            self.gate.wait(timeout=30)
        size = len(batch.token_counts)
        if self.oom_above is not None and size > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if any(word in text for text in texts for word in self.poison):
            raise RuntimeError("device fault (simulated)")
        self.batch_sizes.append(size)
        return self.inner.run(batch)

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return self.inner.finish(pooled, dimensions, normalize)


class WarmUpFails:
    """The real adapter, except that every forward pass fails (a device fault during warm-up)."""

    def __init__(self, inner: EmbeddingFamily) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, item: Item) -> PreparedItem:
        return self.inner.prepare(item)

    def collate(self, items: list[PreparedItem]) -> Batch:
        return self.inner.collate(items)

    def run(self, batch: Batch) -> np.ndarray:
        raise RuntimeError("device fault during warm-up (simulated)")

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return self.inner.finish(pooled, dimensions, normalize)


class EveryFramePicker:
    """Every frame of a video: no model's choice."""

    def list_positions(self, count: int) -> list[int]:
        return list(range(count))

    def file_indices(self, total: int, fps: float) -> list[int]:
        return list(range(total))


class ToyFamily:
    """A family without a model (numpy only, instant): an item's tokens are its text's characters and its pooled
    vector is `vector_of(text)`. `fail` makes every forward pass raise; `finish` is the real `finish_vectors` and
    records each call's (dimensions, normalize)."""

    packs_sequences = False
    kind = "toy"
    task = "embed"
    modalities = frozenset({"text"})
    takes_instructions = True
    matryoshka = True

    def __init__(self, dimension: int = 4, device: str = "cpu") -> None:
        self.dimension = dimension
        self.device = device
        self.dtype = "float32"
        self.frame_picker = EveryFramePicker()
        self.fail = False
        self.prepared: list[Item] = []
        self.finished: list[tuple[int | None, bool]] = []

    def vector_of(self, text: str) -> np.ndarray:
        """1, 2, 3, ... scaled by the text's length: never zero, different per length."""
        return (np.arange(1, self.dimension + 1, dtype=np.float32) * (len(text) + 1)).astype(np.float32)

    def prepare(self, item: Item) -> PreparedItem:
        self.prepared.append(item)
        text = " ".join(item.texts)
        return PreparedItem(payload=text, tokens=max(len(text), 1), modalities=item.modalities)

    def collate(self, items: list[PreparedItem]) -> Batch:
        return Batch(tensors={"texts": [item.payload for item in items]}, token_counts=[item.tokens for item in items])

    def run(self, batch: Batch) -> np.ndarray:
        if self.fail:
            raise RuntimeError("device fault (simulated)")
        return np.stack([self.vector_of(text) for text in batch.tensors["texts"]])

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        self.finished.append((dimensions, normalize))
        return finish_vectors(pooled, dimensions, normalize)


# ---- engine and media resolver ----------------------------------------------------------------------------------


class FakeEngine:
    """The engine's two calls over a family, without a queue: records what it was given; `prepare_error` (with its
    `item_index`) fails `prepare`, `delay` holds `embed` that many seconds."""

    def __init__(self, family: Any, *, delay: float = 0.0) -> None:
        self.family = family
        self.delay = delay
        self.prepare_error: ApiError | None = None
        self.prepared: list[list[Item]] = []
        self.embedded: list[list[PreparedItem]] = []
        self.priorities: list[str] = []  # each embed call's priority

    async def prepare(self, items: list[Item], priority: str = "interactive") -> list[PreparedItem]:
        self.prepared.append(items)
        if self.prepare_error is not None:
            raise self.prepare_error
        return [self.family.prepare(item) for item in items]

    async def embed(self, prepared: list[PreparedItem], priority: str = "interactive") -> EmbedResult:
        self.embedded.append(prepared)
        self.priorities.append(priority)
        await asyncio.sleep(self.delay)
        batch = self.family.collate(prepared)
        pooled = self.family.run(batch)
        return EmbedResult(pooled=pooled, tokens=sum(batch.token_counts), queue_ms=1.5, inference_ms=2.5)


class FakeMediaResolver:
    """Turns text-only specs into items (no media to fetch); records the specs."""

    def __init__(self) -> None:
        self.specs: list[list[ItemSpec]] = []

    async def resolve(self, specs: list[ItemSpec]) -> list[Item]:
        self.specs.append(specs)
        return [Item(texts=list(spec.texts), instruction=spec.instruction) for spec in specs]


# ---- loaders ----------------------------------------------------------------------------------------------------


class GatedLoader:
    """A loader that blocks until released, then returns the family."""

    def __init__(self, family: Any) -> None:
        self.family = family
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, *_: object) -> Any:
        self.entered.set()
        if not self.release.wait(timeout=20):
            raise RuntimeError("test gate never released")
        return self.family


# ---- DNS --------------------------------------------------------------------------------------------------------


class FakeDnsResolver:
    """Answers host look-ups from a table (`later` answers every call after a host's first one); records every call.

    A host missing from the table raises OSError, as an unknown name does.
    """

    def __init__(self, answers: dict[str, list[str]], later: dict[str, list[str]] | None = None) -> None:
        self.answers = answers
        self.later = later or {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        seen = any(name == host for name, _ in self.calls)
        self.calls.append((host, port))
        if seen and host in self.later:
            return self.later[host]
        if host not in self.answers:
            raise OSError("unknown host")
        return self.answers[host]
