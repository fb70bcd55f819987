"""Interactive before bulk: the policy on a fake clock, then the engine with a gated toy model: a query arriving
while a bulk request is being batched rides in the first batch not yet cut; bulk is never starved; bulk preparation
never holds a query's up; a cancelled bulk request still drops its queued items."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest

from embedding_api.engine.batcher import Budget, Engine
from embedding_api.engine.priority import BULK_SHARE_WHILE_LIVE, INTERACTIVE_LIVE_S, PriorityPolicy
from embedding_api.families.base import Batch, EmbeddingFamily, PreparedItem
from embedding_api.items import Item, Priority
from tests.fakes import ToyFamily


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- the policy, on a fake clock --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Queued:
    name: str
    priority: Priority
    queued_at: float = field(default=0.0)


def test_the_oldest_interactive_item_anchors_and_takes_interactive_items_first() -> None:
    clock = FakeClock()
    policy = PriorityPolicy(bulk_max_wait=2.0, clock=clock)
    pending = [Queued("b1", "bulk", 99.0), Queued("i1", "interactive", 99.5), Queued("i2", "interactive", 99.9)]
    turn = policy.next_turn(pending)
    assert turn.anchor.name == "i1"
    assert [entry.name for entry in turn.pool] == ["i1", "i2"]
    assert turn.share == 1
    assert [entry.name for entry in turn.filler] == ["b1"]  # bulk only fills a share of the budget on top


def test_bulk_goes_when_no_interactive_waits_with_a_smaller_share_while_interactive_is_live() -> None:
    clock = FakeClock()
    policy = PriorityPolicy(bulk_max_wait=2.0, clock=clock)
    pending = [Queued("b1", "bulk", 100.0), Queued("b2", "bulk", 100.0)]
    assert policy.next_turn(pending).share == 1  # no interactive traffic: full batches
    policy.queued("interactive")
    turn = policy.next_turn(pending)
    assert turn.anchor.name == "b1" and turn.share == BULK_SHARE_WHILE_LIVE
    clock.now += INTERACTIVE_LIVE_S + 0.01
    assert policy.next_turn(pending).share == 1  # the queries stopped: full batches again


def test_an_overdue_bulk_item_goes_first_then_bulk_waits_its_turn_again() -> None:
    clock = FakeClock()
    policy = PriorityPolicy(bulk_max_wait=2.0, clock=clock)
    bulk = Queued("b1", "bulk", 100.0)
    query = Queued("i1", "interactive", 100.0)
    clock.now = 101.999
    assert policy.next_turn([bulk, query]).anchor.name == "i1"
    clock.now = 102.0  # b1 has waited BULK_MAX_WAIT
    turn = policy.next_turn([bulk, query])
    assert turn.anchor.name == "b1"
    assert {entry.name for entry in turn.pool} == {"b1", "i1"}  # a bulk batch may take the query along
    later = Queued("b2", "bulk", 100.0)  # queued with b1: as old, but bulk has just had a batch
    clock.now = 103.0
    assert policy.next_turn([later, query]).anchor.name == "i1"
    clock.now = 104.0  # BULK_MAX_WAIT since bulk's last batch
    assert policy.next_turn([later, query]).anchor.name == "b2"


def test_bulk_is_held_back_from_the_pipeline_only_while_queries_are_live() -> None:
    clock = FakeClock()
    policy = PriorityPolicy(bulk_max_wait=2.0, clock=clock)
    bulk = [Queued("b1", "bulk", 100.0)]
    assert not policy.holds_bulk(bulk)  # no query seen: cut bulk batches ahead as before
    policy.queued("interactive")
    assert policy.holds_bulk(bulk)
    assert not policy.holds_bulk([*bulk, Queued("i1", "interactive", 100.0)])  # a query's batch is cut at once
    clock.now = 101.5
    assert not policy.holds_bulk(bulk)  # no query for INTERACTIVE_LIVE_S
    policy.queued("interactive")
    clock.now = 102.0
    assert not policy.holds_bulk(bulk)  # overdue: bulk goes now


# ---- the engine, with a gated toy model -------------------------------------------------------------------------


class GatedToy(ToyFamily):
    """The toy model, recording each forward pass's texts; `gate` holds every pass until set, `delay` slows each
    pass, `prepare_delay` slows preparing each bulk text (those starting with `b`)."""

    def __init__(self, delay: float = 0.0, prepare_delay: float = 0.0) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.delay = delay
        self.prepare_delay = prepare_delay
        self.batches: list[list[str]] = []

    def prepare(self, item: Item) -> PreparedItem:
        if item.texts[0].startswith("b"):
            time.sleep(self.prepare_delay)
        return super().prepare(item)

    def run(self, batch: Batch) -> np.ndarray:
        self.running.set()
        if not self.gate.wait(timeout=10):
            raise RuntimeError("test gate never opened")
        time.sleep(self.delay)
        self.batches.append(list(batch.tensors["texts"]))
        return super().run(batch)


def as_family(family: GatedToy) -> EmbeddingFamily:
    return cast(EmbeddingFamily, family)  # the toy's frame picker is its own class, not the protocol


def texts(*values: str) -> list[Item]:
    return [Item(texts=[value]) for value in values]


def batch_of(family: GatedToy, text: str) -> int:
    return next(index for index, batch in enumerate(family.batches) if text in batch)


def test_a_query_arriving_mid_bulk_rides_in_the_first_batch_not_yet_cut() -> None:
    """No query for a while: 64 bulk items in full batches of 4 (16 batches), the second cut behind the first as it
    runs. A query arriving then rides in the third batch (with a quarter of the budget of bulk items on top: one),
    not after the 16th."""
    family = GatedToy()

    async def scenario() -> None:
        engine = Engine(as_family(family), Budget(max_items=4), bulk_max_wait=60.0)
        engine.start()
        bulk = asyncio.ensure_future(
            engine.embed(await engine.prepare(texts(*(f"b{i:02d}" for i in range(64))), "bulk"), "bulk")
        )
        family.gate.clear()
        await asyncio.sleep(0.05)
        assert family.running.is_set()
        query = asyncio.ensure_future(engine.embed(await engine.prepare(texts("q")), "interactive"))
        await asyncio.sleep(0.05)
        family.gate.set()
        await asyncio.wait_for(asyncio.gather(bulk, query), timeout=10)
        await engine.stop()

    run(scenario())
    assert sum(len(batch) for batch in family.batches) == 65
    assert batch_of(family, "q") == 2
    assert family.batches[2][0] == "q" and len(family.batches[2]) == 1 + 4 // BULK_SHARE_WHILE_LIVE


def test_while_queries_are_live_a_query_rides_in_the_very_next_batch() -> None:
    """A query a moment ago: bulk batches are a quarter of the budget (1 item here) and none is cut ahead while one
    runs, so a query arriving mid-bulk goes right after the batch on the device."""
    family = GatedToy()

    async def scenario() -> None:
        engine = Engine(as_family(family), Budget(max_items=4), bulk_max_wait=60.0)
        engine.start()
        await engine.embed(await engine.prepare(texts("earlier")))
        family.gate.clear()
        bulk = asyncio.ensure_future(
            engine.embed(await engine.prepare(texts(*(f"b{i:02d}" for i in range(16))), "bulk"), "bulk")
        )
        await asyncio.sleep(0.05)
        assert engine.queued_items == 15  # one bulk batch on the device, nothing cut behind it
        query = asyncio.ensure_future(engine.embed(await engine.prepare(texts("q"))))
        await asyncio.sleep(0.05)
        family.gate.set()
        await asyncio.wait_for(asyncio.gather(bulk, query), timeout=10)
        await engine.stop()

    run(scenario())
    assert family.batches[:3] == [["earlier"], ["b00"], ["q", "b01"]]
    assert sum(len(batch) for batch in family.batches) == 18


def test_without_priorities_the_query_waits_behind_the_bulk_request() -> None:
    """The control for the test above: the same bulk request sent as interactive keeps its place ahead."""
    family = GatedToy()

    async def scenario() -> None:
        engine = Engine(as_family(family), Budget(max_items=4), bulk_max_wait=60.0)
        engine.start()
        first = asyncio.ensure_future(engine.embed(await engine.prepare(texts(*(f"b{i:02d}" for i in range(64))))))
        family.gate.clear()
        await asyncio.sleep(0.05)
        query = asyncio.ensure_future(engine.embed(await engine.prepare(texts("qqq"))))
        await asyncio.sleep(0.05)
        family.gate.set()
        await asyncio.wait_for(asyncio.gather(first, query), timeout=10)
        await engine.stop()

    run(scenario())
    assert batch_of(family, "qqq") > 10


def test_bulk_batches_are_cut_smaller_while_queries_keep_coming() -> None:
    family = GatedToy()

    async def scenario() -> None:
        engine = Engine(as_family(family), Budget(max_items=8), bulk_max_wait=60.0)
        engine.start()
        await engine.embed(await engine.prepare(texts("q")))
        await engine.embed(await engine.prepare(texts(*(f"b{i:02d}" for i in range(16))), "bulk"), "bulk")
        await engine.stop()

    run(scenario())
    per_batch = 8 // BULK_SHARE_WHILE_LIVE
    assert [len(batch) for batch in family.batches[1:]] == [per_batch] * (16 // per_batch)


async def _flood_with_queries(engine: Engine, stop: asyncio.Event, clients: int = 32) -> int:
    """Clients that each send one query after another until `stop`: the device never runs short of them."""
    done = 0

    async def client(index: int) -> None:
        nonlocal done
        while not stop.is_set():
            await engine.embed(await engine.prepare(texts(f"q{index}")))
            done += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


@pytest.mark.parametrize(("bulk_max_wait", "served"), [(0.2, True), (30.0, False)])
def test_bulk_is_not_starved_by_a_flood_of_queries(bulk_max_wait: float, served: bool) -> None:
    """With queries always waiting, a bulk item still goes once it has waited BULK_MAX_WAIT (0.2 s here); with a
    wait longer than the test (the control) it is still queued when the flood ends."""
    family = GatedToy(delay=0.005)

    async def scenario() -> tuple[float | None, int]:
        engine = Engine(as_family(family), Budget(max_items=4), bulk_max_wait=bulk_max_wait)
        engine.start()
        stop = asyncio.Event()
        flood = asyncio.ensure_future(_flood_with_queries(engine, stop))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        bulk = asyncio.ensure_future(engine.embed(await engine.prepare(texts("bulk"), "bulk"), "bulk"))
        done, _ = await asyncio.wait({bulk}, timeout=1.5)
        waited = time.perf_counter() - started if done else None
        stop.set()
        queries = await asyncio.wait_for(flood, timeout=10)
        await asyncio.wait_for(bulk, timeout=10)
        await engine.stop()
        return waited, queries

    waited, queries = run(scenario())
    assert queries > 50  # the queries really did keep the device busy
    if served:
        assert waited is not None and 0.2 <= waited < 0.2 + 0.6
    else:
        assert waited is None


def test_bulk_preparation_does_not_hold_a_query_up() -> None:
    """200 bulk texts take about 2 s to prepare (20 ms each, two workers); a query sent meanwhile is prepared
    and embedded well before they are."""
    family = GatedToy(prepare_delay=0.02)

    async def scenario() -> tuple[float, bool]:
        engine = Engine(as_family(family), Budget(max_items=64), bulk_max_wait=60.0)
        engine.start()
        bulk = asyncio.ensure_future(engine.prepare(texts(*(f"b{i:03d}" for i in range(200))), "bulk"))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        await engine.embed(await engine.prepare(texts("q")))
        took = time.perf_counter() - started
        still_preparing = not bulk.done()
        await asyncio.wait_for(bulk, timeout=10)
        await engine.stop()
        return took, still_preparing

    took, still_preparing = run(scenario())
    assert still_preparing
    assert took < 0.5


def test_a_cancelled_bulk_request_drops_its_queued_items() -> None:
    family = GatedToy()

    async def scenario() -> tuple[dict[Priority, int], dict[Priority, int]]:
        engine = Engine(as_family(family), Budget(max_items=2), bulk_max_wait=60.0)
        engine.start()
        family.gate.clear()
        doomed = asyncio.ensure_future(
            engine.embed(await engine.prepare(texts(*(f"b{i}" for i in range(20))), "bulk"), "bulk")
        )
        query = asyncio.ensure_future(engine.embed(await engine.prepare(texts("q", "qq", "qqq"))))
        await asyncio.sleep(0.05)
        before = engine.queued_by_priority()
        doomed.cancel()
        await asyncio.sleep(0.05)
        after = engine.queued_by_priority()
        family.gate.set()
        await asyncio.wait_for(query, timeout=10)
        await engine.stop()
        return before, after

    before, after = run(scenario())
    assert before["bulk"] >= 16 and before["interactive"] >= 1
    assert after["bulk"] == 0
    assert sum(len(batch) for batch in family.batches if batch[0].startswith("b")) <= 4
