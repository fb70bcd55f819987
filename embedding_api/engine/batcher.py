"""One engine, one queue: items from every request are batched together under token, pixel and size budgets.

A single batching loop cuts a batch as soon as the device can take one (no fixed sleeps). Waiting items are
sorted by length around the oldest one (of the priority whose turn it is) so padding stays small and nothing
starves. Collation runs in a CPU pool while the device runs the previous batch; the forward pass runs on one
dedicated thread. Each item carries its own future, so one request's items may span batches and one batch may
serve many requests. Which items the next batch is cut from (interactive before bulk, bulk never starved) is
`engine/priority.py`'s.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from embedding_api.engine.memory import BIG_PIXELS, release_freed_memory
from embedding_api.engine.priority import BULK_SHARE_WHILE_LIVE, PriorityPolicy
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import Batch, EmbeddingFamily, PreparedItem
from embedding_api.families.device import is_out_of_memory, release_device_cache
from embedding_api.items import DEFAULT_PRIORITY, PRIORITIES, Item, Priority

log = logging.getLogger(__name__)


# Preparing a long request takes about this many jobs per CPU worker (enough to keep them all busy to the end).
_JOBS_PER_WORKER = 4


def _prepare_each(family: EmbeddingFamily, items: list[Item]) -> list[PreparedItem | Exception]:
    """One CPU-pool job: the items in turn, each one's error kept in its place."""
    results: list[PreparedItem | Exception] = []
    for item in items:
        try:
            results.append(family.prepare(item))
        except Exception as exc:
            results.append(exc)
    return results


@dataclass(frozen=True)
class Budget:
    """What one forward pass may hold: padded tokens, pixels and items."""

    max_tokens: int = 16384
    max_pixels: int = 8 * 1800 * 32 * 32
    max_items: int = 64

    def shared(self, share: int) -> Budget:
        """A `share`-th of this budget (at least one item's worth)."""
        if share == 1:
            return self
        return Budget(
            max(1, self.max_tokens // share), max(1, self.max_pixels // share), max(1, self.max_items // share)
        )


@dataclass
class _Entry:
    item: PreparedItem
    future: asyncio.Future[tuple[np.ndarray, int, float, float]]
    queued_at: float = field(default_factory=time.perf_counter)
    priority: Priority = DEFAULT_PRIORITY


@dataclass
class EmbedResult:
    """Pooled (not yet finished) vectors of one request, in its own order, and what it cost."""

    pooled: np.ndarray
    tokens: int
    queue_ms: float
    inference_ms: float


class EngineObserver(Protocol):
    """Optional hooks for metrics; called on the event loop, must be quick and must not raise."""

    def items_queued(self, items: list[PreparedItem], priority: Priority) -> None: ...

    def batch_run(self, size: int, tokens: int, seconds: float) -> None: ...


class Engine:
    """The shared batcher in front of a family adapter."""

    def __init__(
        self,
        family: EmbeddingFamily,
        budget: Budget = Budget(),
        *,
        max_queued_items: int = 65536,
        cpu_workers: int = 2,
        observer: EngineObserver | None = None,
        bulk_max_wait: float = 2.0,
        cpu_thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self.family = family
        self.observer = observer
        self.budget = budget
        self.max_queued_items = max_queued_items
        self.policy = PriorityPolicy(bulk_max_wait, time.perf_counter)
        self._cpu_workers = cpu_workers
        # `cpu_thread_setup` runs first in every thread but the device's (the family's rule for helper threads).
        self._cpu = ThreadPoolExecutor(cpu_workers, thread_name_prefix="embed-cpu", initializer=cpu_thread_setup)
        # Bulk preparation has a pool of its own: a query's tokenising never queues behind 2,048 bulk items'.
        self._cpu_bulk = ThreadPoolExecutor(
            cpu_workers, thread_name_prefix="embed-cpu-bulk", initializer=cpu_thread_setup
        )
        # Collation has a thread of its own so a flood of per-item work never delays the next batch.
        self._collate = ThreadPoolExecutor(1, thread_name_prefix="embed-collate", initializer=cpu_thread_setup)
        self._device = ThreadPoolExecutor(1, thread_name_prefix="embed-device")
        self._pending: list[_Entry] = []
        self._wake = asyncio.Event()
        # One batch on the device plus one collated and waiting: the next cut waits for the device to free up.
        self._slots = asyncio.Semaphore(2)
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._on_device = 0  # batches collated or running on the device thread right now
        self.consecutive_failures = 0

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="embed-batcher")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(ApiError(ErrorKind.NOT_READY, "the server is shutting down"))
        self._pending.clear()
        self._cpu.shutdown(wait=False, cancel_futures=True)
        self._cpu_bulk.shutdown(wait=False, cancel_futures=True)
        self._collate.shutdown(wait=False, cancel_futures=True)
        self._device.shutdown(wait=True, cancel_futures=True)

    @property
    def queued_items(self) -> int:
        return len(self._pending)

    def queued_by_priority(self) -> dict[Priority, int]:
        counts = dict.fromkeys(PRIORITIES, 0)
        for entry in self._pending:
            counts[entry.priority] += 1
        return counts

    # ---- public API ----------------------------------------------------------------------------------------

    async def prepare(self, items: list[Item], priority: Priority = DEFAULT_PRIORITY) -> list[PreparedItem]:
        """Per-item CPU work in the pool, all items at once; the first bad item's error is raised."""
        loop = asyncio.get_running_loop()
        pool = self._cpu if priority == "interactive" else self._cpu_bulk
        # A few items a job: a job per item would wake the event loop 2,048 times for a 2,048-text request.
        size = max(1, len(items) // (self._cpu_workers * _JOBS_PER_WORKER))
        groups = [items[start : start + size] for start in range(0, len(items), size)]
        jobs = [loop.run_in_executor(pool, _prepare_each, self.family, group) for group in groups]
        try:
            outcomes = await asyncio.gather(*jobs)
        except asyncio.CancelledError:
            # Jobs not started are cancelled with their futures; the running ones stop at their next check.
            for item in items:
                item.abandoned.set()
            raise
        results = [result for outcome in outcomes for result in outcome]
        prepared: list[PreparedItem] = []
        for index, result in enumerate(results):
            if isinstance(result, ApiError):
                result.item_index = index
                raise result
            if isinstance(result, BaseException):
                raise result
            prepared.append(result)
        if sum(item.pixels for item in prepared) > BIG_PIXELS:
            await loop.run_in_executor(self._cpu, release_freed_memory)
        return prepared

    async def embed(self, items: list[PreparedItem], priority: Priority = DEFAULT_PRIORITY) -> EmbedResult:
        """Queue the items, wait for their vectors. Cancelling the caller drops its queued items."""
        if len(self._pending) + len(items) > self.max_queued_items:
            raise ApiError(ErrorKind.OVERLOADED, "the server is busy: too many queued inputs, retry shortly")
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future(), priority=priority) for item in items]
        self._pending.extend(entries)
        self.policy.queued(priority)
        self._wake.set()
        if self.observer is not None:
            self.observer.items_queued(items, priority)
        try:
            results = await asyncio.gather(*(entry.future for entry in entries))
        except BaseException as exc:
            for index, entry in enumerate(entries):
                failed_here = entry.future.done() and not entry.future.cancelled() and entry.future.exception() is exc
                if isinstance(exc, ApiError) and failed_here:
                    exc.item_index = index
                entry.future.cancel()
            self._pending = [entry for entry in self._pending if not entry.future.done()]
            raise
        pooled = np.stack([vector for vector, _, _, _ in results])
        tokens = sum(count for _, count, _, _ in results)
        queue_ms = max(q for _, _, q, _ in results)
        inference_ms = max(i for _, _, _, i in results)
        return EmbedResult(pooled=pooled, tokens=tokens, queue_ms=queue_ms, inference_ms=inference_ms)

    # ---- the batching loop ---------------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while True:
            await self._slots.acquire()
            batch: list[_Entry] = []
            while not batch:
                self._pending = [entry for entry in self._pending if not entry.future.done()]
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._running and self.policy.holds_bulk(self._pending):
                    await self._until_freed_or_woken()
                    continue
                batch = self._cut()
            task = asyncio.get_running_loop().create_task(self._process(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _until_freed_or_woken(self) -> None:
        """Until a batch in flight is done or new items are queued, whichever comes first."""
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({woken, *self._running}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    def _cut(self) -> list[_Entry]:
        """The policy's anchor (the oldest item of the class whose turn it is) plus its nearest neighbours by length
        among the items it may take, within its share of the budget. A query's batch then takes bulk items by the
        same rule within a share of the budget on top: they ride along without making the batch much longer."""
        turn = self.policy.next_turn(self._pending)
        anchor = turn.anchor
        packed = getattr(self.family, "packs_sequences", False)
        chosen = [anchor]
        longest = real = anchor.item.tokens
        pixels = anchor.item.pixels
        prefixes = {anchor.item.shared_prefix}

        def computed(item: PreparedItem) -> int:
            """The tokens an item adds to a packed row: a prefix already in the batch is computed once."""
            shared = item.shared_prefix is not None and item.shared_prefix in prefixes
            return item.tokens - item.shared_tokens if shared else item.tokens

        def grow(pool: list[_Entry], budget: Budget) -> None:
            nonlocal longest, real, pixels
            ordered = sorted((entry for entry in pool if entry is not anchor), key=lambda entry: entry.item.tokens)
            high = bisect.bisect_left([entry.item.tokens for entry in ordered], anchor.item.tokens)
            low = high - 1

            def fits(entry: _Entry) -> bool:
                # padding-free batches compute their real tokens only; padded ones their longest item for every row
                cost = real + computed(entry.item) if packed else max(longest, entry.item.tokens) * (len(chosen) + 1)
                return cost <= budget.max_tokens and pixels + entry.item.pixels <= budget.max_pixels

            while len(chosen) < budget.max_items:
                candidates = []
                if low >= 0:
                    candidates.append((anchor.item.tokens - ordered[low].item.tokens, "low"))
                if high < len(ordered):
                    candidates.append((ordered[high].item.tokens - anchor.item.tokens, "high"))
                added = False
                for _, side in sorted(candidates):
                    entry = ordered[low] if side == "low" else ordered[high]
                    if fits(entry):
                        chosen.append(entry)
                        longest = max(longest, entry.item.tokens)
                        real += computed(entry.item)
                        prefixes.add(entry.item.shared_prefix)
                        pixels += entry.item.pixels
                        if side == "low":
                            low -= 1
                        else:
                            high += 1
                        added = True
                        break
                if not added:
                    break

        grow(turn.pool, self.budget.shared(turn.share))
        if turn.filler:
            full, extra = self.budget, self.budget.shared(BULK_SHARE_WHILE_LIVE)
            tokens = real if packed else longest * len(chosen)
            grow(
                turn.filler,
                Budget(
                    min(full.max_tokens, tokens + extra.max_tokens),
                    min(full.max_pixels, pixels + extra.max_pixels),
                    min(full.max_items, len(chosen) + extra.max_items),
                ),
            )
        taken = {id(entry) for entry in chosen}
        self._pending = [entry for entry in self._pending if id(entry) not in taken]
        # Items sharing a prefix sit together, where the family's packing finds them (it looks a few items back).
        group = {prefix: rank for rank, prefix in enumerate(dict.fromkeys(e.item.shared_prefix for e in chosen))}
        chosen.sort(key=lambda entry: group[entry.item.shared_prefix])
        return chosen

    async def _process(self, entries: list[_Entry]) -> None:
        try:
            await self._execute(entries)
        finally:
            self._slots.release()

    async def _execute(self, entries: list[_Entry]) -> None:
        live = [entry for entry in entries if not entry.future.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        items = [entry.item for entry in live]
        try:
            if self._on_device == 0:
                # The device is idle: collate on its thread too, saving a thread hop for lone requests.
                self._on_device += 1
                try:
                    started = time.perf_counter()
                    batch, pooled = await loop.run_in_executor(self._device, self._collate_and_run, items)
                finally:
                    self._on_device -= 1
            else:
                # The device is busy: collate in the CPU pool meanwhile, so the device never waits on it.
                batch = await loop.run_in_executor(self._collate, self.family.collate, items)
                self._on_device += 1
                try:
                    started = time.perf_counter()
                    pooled = await loop.run_in_executor(self._device, self.family.run, batch)
                finally:
                    self._on_device -= 1
            finished = time.perf_counter()
        except Exception as exc:  # isolate: split until the failing item is alone
            if len(live) > 1:
                if is_out_of_memory(exc):
                    log.warning("out of memory on a batch of %d; splitting it", len(live))
                    release_device_cache()
                else:
                    log.warning("a batch of %d failed (%s); retrying in halves", len(live), type(exc).__name__)
                middle = len(live) // 2
                await self._execute(live[:middle])
                await self._execute(live[middle:])
                return
            self._fail(live[0], exc)
            return
        self.consecutive_failures = 0
        inference_ms = (finished - started) * 1000
        if self.observer is not None:
            self.observer.batch_run(len(live), sum(batch.token_counts[: len(live)]), finished - started)
        for index, entry in enumerate(live):
            if not entry.future.done():
                queue_ms = (started - entry.queued_at) * 1000
                entry.future.set_result((pooled[index], batch.token_counts[index], queue_ms, inference_ms))
        if sum(item.pixels for item in items) > BIG_PIXELS:
            del batch  # its pixel tensors go now, then their pages go back to the system
            await loop.run_in_executor(self._collate, release_freed_memory)

    def _collate_and_run(self, items: list[PreparedItem]) -> tuple[Batch, np.ndarray]:
        batch = self.family.collate(items)
        return batch, self.family.run(batch)

    def _fail(self, entry: _Entry, exc: Exception) -> None:
        if entry.future.done():
            return
        if isinstance(exc, ApiError):
            error = exc
        elif is_out_of_memory(exc):
            release_device_cache()
            error = ApiError(
                ErrorKind.ITEM_TOO_LARGE,
                "this input alone does not fit in the device's memory; send a smaller image, fewer frames or "
                "shorter text",
            )
        else:
            log.error("embedding an item failed", exc_info=exc)
            self.consecutive_failures += 1  # only faults of the engine itself count towards ill health
            error = ApiError(ErrorKind.INTERNAL, f"embedding failed: {type(exc).__name__}")
        entry.future.set_exception(error)
