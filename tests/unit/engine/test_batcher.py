"""The shared batcher: order, budgets, cancellation, back-pressure, OOM splitting, mixed modalities."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from embedding_api.engine.batcher import Budget, Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import EmbeddingFamily, PreparedItem
from embedding_api.items import Item, VideoClip
from tests.conftest import make_image
from tests.fakes import RecordingFamily


def texts(*values: str) -> list[Item]:
    return [Item(texts=[value]) for value in values]


async def _embed_alone(engine: Engine, items: list[Item]) -> np.ndarray:
    rows = []
    for item in items:
        prepared = await engine.prepare([item])
        rows.append((await engine.embed(prepared)).pooled[0])
    return np.stack(rows)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_keep_their_order(tiny_family: EmbeddingFamily) -> None:
    family = RecordingFamily(tiny_family)
    requests = [texts(*(f"request {r} item {i} " + "word " * (i * 3) for i in range(5))) for r in range(8)]

    async def scenario() -> tuple[list[np.ndarray], np.ndarray]:
        engine = Engine(family, Budget(max_tokens=100_000, max_items=64))
        engine.start()
        prepared = [await engine.prepare(items) for items in requests]
        results = await asyncio.gather(*(engine.embed(p) for p in prepared))
        alone = await _embed_alone(engine, [item for items in requests for item in items])
        await engine.stop()
        return [result.pooled for result in results], alone

    together, alone = run(scenario())
    assert max(family.batch_sizes) > 5, "items of several requests should share a batch"
    np.testing.assert_allclose(np.concatenate(together), alone, atol=1e-5)


def test_budget_limits_batch_size_and_tokens(tiny_family: EmbeddingFamily) -> None:
    """Phase 1: the item cap alone cuts 40 items into batches of 7. Phase 2: a token budget of three of the longest
    items (costed padded: longest x size) cuts the same 40 into batches of 3, although 64 items would be allowed."""
    family = RecordingFamily(tiny_family)
    items = texts(*(f"short text number {i}" for i in range(40)))

    async def scenario() -> tuple[list[int], list[int]]:
        engine = Engine(family, Budget(max_tokens=100_000, max_items=7))
        engine.start()
        prepared = await engine.prepare(items)
        tokens = max(p.tokens for p in prepared)
        await engine.embed(prepared)
        by_items = list(family.batch_sizes)
        engine.budget = Budget(max_tokens=tokens * 3, max_items=64)
        family.batch_sizes.clear()
        await engine.embed(prepared)
        by_tokens = list(family.batch_sizes)
        await engine.stop()
        return by_items, by_tokens

    by_items, by_tokens = run(scenario())
    assert sorted(by_items) == [5, 7, 7, 7, 7, 7]
    assert sorted(by_tokens) == [1] + [3] * 13


def test_cut_sorts_by_length_around_the_oldest(tiny_family: EmbeddingFamily) -> None:
    engine = Engine(tiny_family, Budget(max_tokens=10_000, max_items=3))

    def entry(tokens: int) -> Any:
        from embedding_api.engine.batcher import _Entry

        loop = asyncio.new_event_loop()
        return _Entry(PreparedItem(payload=None, tokens=tokens), loop.create_future())

    lengths = [50, 900, 10, 52, 48, 800, 49]
    engine._pending = [entry(n) for n in lengths]
    chosen = [e.item.tokens for e in engine._cut()]
    # The oldest (50) first, then its nearest by length: 49 (1 away); 48 and 52 are both 2 away and the tie goes
    # to the longer side, so 52. The rest stay queued in their arrival order.
    assert chosen == [50, 49, 52]
    assert [e.item.tokens for e in engine._pending] == [900, 10, 48, 800]


def test_a_shared_prefix_counts_once_in_a_packed_batch_and_its_items_sit_together(
    tiny_family: EmbeddingFamily,
) -> None:
    from embedding_api.engine.batcher import _Entry

    assert getattr(tiny_family, "packs_sequences", False)  # the CPU path: padding-free rows
    loop = asyncio.new_event_loop()

    def entry(name: str, prefix: str | None) -> Any:
        item = PreparedItem(payload=name, tokens=100, shared_prefix=prefix, shared_tokens=60 if prefix else 0)
        return _Entry(item, loop.create_future())

    engine = Engine(tiny_family, Budget(max_tokens=300, max_items=64))
    engine._pending = [entry("q1", "query"), entry("other", None), entry("q2", "query"), entry("q3", "query")]
    engine._pending.append(entry("q4", "query"))
    # 100 (q1) + 100 (other) + 40 (q2: its 60 shared tokens are q1's) + 40 (q3) = 280; q4 would make 320
    assert [e.item.payload for e in engine._cut()] == ["q1", "q2", "q3", "other"]
    assert [e.item.payload for e in engine._pending] == ["q4"]

    engine._pending = [entry(name, None) for name in ("a", "b", "c", "d")]
    assert [e.item.payload for e in engine._cut()] == ["a", "b", "c"]  # nothing shared: 3 x 100
    loop.close()


def test_simulated_out_of_memory_splits_the_batch(tiny_family: EmbeddingFamily) -> None:
    family = RecordingFamily(tiny_family, oom_above=2)
    items = texts(*(f"item {i}" for i in range(8)))

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        engine = Engine(family, Budget(max_items=64))
        engine.start()
        result = await engine.embed(await engine.prepare(items))
        alone = await _embed_alone(engine, items)
        await engine.stop()
        return result.pooled, alone

    pooled, alone = run(scenario())
    assert max(family.batch_sizes) <= 2
    np.testing.assert_allclose(pooled, alone, atol=1e-5)


def test_one_item_that_never_fits_fails_only_its_request(tiny_family: EmbeddingFamily) -> None:
    family = RecordingFamily(tiny_family, oom_above=0)

    async def scenario() -> ApiError:
        engine = Engine(family)
        engine.start()
        with pytest.raises(ApiError) as caught:
            await engine.embed(await engine.prepare(texts("too big")))
        family.oom_above = None
        ok = await engine.embed(await engine.prepare(texts("fine")))
        assert ok.pooled.shape == (1, family.dimension)
        await engine.stop()
        return caught.value

    error = run(scenario())
    assert error.kind is ErrorKind.ITEM_TOO_LARGE
    assert error.item_index == 0


def test_a_failing_item_is_isolated_from_its_batch_mates(tiny_family: EmbeddingFamily) -> None:
    family = RecordingFamily(tiny_family)
    family.poison = {"poison"}

    async def scenario() -> tuple[BaseException | np.ndarray, ...]:
        engine = Engine(family, Budget(max_items=64))
        engine.start()
        good = [await engine.prepare(texts(f"good {i}")) for i in range(3)]
        bad = await engine.prepare(texts("poison pill"))
        outcomes = await asyncio.gather(*(engine.embed(p) for p in [*good, bad]), return_exceptions=True)
        await engine.stop()
        return tuple(o if isinstance(o, BaseException) else o.pooled for o in outcomes)

    outcomes = run(scenario())
    assert all(isinstance(o, np.ndarray) for o in outcomes[:3])
    assert isinstance(outcomes[3], ApiError) and outcomes[3].kind is ErrorKind.INTERNAL


def test_queue_bound_answers_overloaded(tiny_family: EmbeddingFamily) -> None:
    gate = threading.Event()
    family = RecordingFamily(tiny_family, gate=gate)

    async def scenario() -> ApiError:
        engine = Engine(family, Budget(max_items=1), max_queued_items=4)
        engine.start()
        prepared = await engine.prepare(texts(*(f"t{i}" for i in range(4))))
        first = asyncio.ensure_future(engine.embed(prepared))
        await asyncio.sleep(0.1)
        with pytest.raises(ApiError) as caught:
            await engine.embed(await engine.prepare(texts(*(f"u{i}" for i in range(3)))))
        gate.set()
        await first
        await engine.stop()
        return caught.value

    error = run(scenario())
    assert error.kind is ErrorKind.OVERLOADED


def test_cancelled_request_frees_its_queued_items(tiny_family: EmbeddingFamily) -> None:
    gate = threading.Event()
    family = RecordingFamily(tiny_family, gate=gate)

    async def scenario() -> tuple[int, int]:
        engine = Engine(family, Budget(max_items=1))
        engine.start()
        blocker = asyncio.ensure_future(engine.embed(await engine.prepare(texts("blocker"))))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(engine.embed(await engine.prepare(texts(*(f"x{i}" for i in range(6))))))
        await asyncio.sleep(0.05)
        queued_before = engine.queued_items
        doomed.cancel()
        await asyncio.sleep(0.05)
        queued_after = engine.queued_items
        gate.set()
        await blocker
        await engine.stop()
        return queued_before, queued_after

    before, after = run(scenario())
    assert before >= 4
    assert after == 0
    assert sum(family.batch_sizes) <= 3  # the cancelled items never reached the device beyond those already cut


def test_mixed_modalities_share_one_batch(tiny_family: EmbeddingFamily) -> None:
    family = RecordingFamily(tiny_family)
    image = make_image(64, 64, seed=3)
    frames = [make_image(48, 48, seed=s) for s in range(3)]
    items = [
        Item(texts=["plain text"]),
        Item(images=[image]),
        Item(texts=["fused"], images=[image]),
        Item(videos=[VideoClip(frames=frames)]),
    ]

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        engine = Engine(family, Budget(max_tokens=1_000_000, max_items=64))
        engine.start()
        together = (await engine.embed(await engine.prepare(items))).pooled
        alone = await _embed_alone(engine, items)
        await engine.stop()
        return together, alone

    together, alone = run(scenario())
    assert family.batch_sizes[0] == 4
    np.testing.assert_allclose(together, alone, atol=1e-5)


class SlowFrames:
    """A video whose frames take a while each to decode, counting how many were read."""

    def __init__(self, count: int, delay: float) -> None:
        self.count = count
        self.delay = delay
        self.read = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        for index in range(self.count):
            time.sleep(self.delay)
            self.read += 1
            yield make_image(48, 48, seed=index)


def test_cancelled_request_stops_its_running_cpu_work(tiny_family: EmbeddingFamily) -> None:
    """Preparation already running in the CPU pool stops at its next frame once the request is cancelled."""
    frames = SlowFrames(count=64, delay=0.05)  # about 3.2 s if read to the end
    items = [Item(videos=[VideoClip(frames=frames, fps=1.0, frame_indices=list(range(64)))])]

    async def scenario() -> None:
        engine = Engine(tiny_family, Budget())
        engine.start()
        task = asyncio.ensure_future(engine.prepare(items))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)  # the worker notices at its next frame; without that it would read ~36 by now
        await engine.stop()

    run(scenario())
    assert items[0].abandoned.is_set()
    assert 2 <= frames.read <= 12


def test_helper_threads_run_the_setup_and_the_device_thread_does_not(tiny_family: EmbeddingFamily) -> None:
    import threading

    set_up: list[str] = []

    async def scenario() -> None:
        engine = Engine(
            tiny_family, Budget(max_items=4), cpu_thread_setup=lambda: set_up.append(threading.current_thread().name)
        )
        engine.start()
        try:
            await _embed_alone(engine, texts("a", "b"))
        finally:
            await engine.stop()

    run(scenario())
    assert set_up and all(name.startswith("embed-cpu") or name.startswith("embed-collate") for name in set_up)
    assert not any(name.startswith("embed-device") for name in set_up)
