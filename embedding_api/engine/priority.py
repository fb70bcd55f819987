"""Interactive before bulk: which queued items the next batch is cut from.

A request is `interactive` (the default: someone waits for it) or `bulk` (a backfill, an indexing job). The next
batch is anchored on the oldest interactive item, so a lone query arriving while a bulk request of thousands of
items is being batched rides in the next batch, not after the whole bulk request. A batch on the device is never
preempted, so while interactive traffic is live: bulk batches are cut at a share of the budget, none is cut ahead
of the device (it would stand between the device and the next query), and bulk items fill a share of the budget
on top of each query's batch (bulk keeps moving). Bulk is never starved: once the oldest bulk item has waited
BULK_MAX_WAIT_MS (counted from when it was queued, or from bulk's last batch if that was later), the next batch
is anchored on it, so bulk gets at least one batch of its own in every BULK_MAX_WAIT_MS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from embedding_api.items import Priority

# Interactive traffic counts as live this long after its last item was queued: long enough to span a client's
# think time between two queries, short enough that a bulk-only server soon gets its full batches back.
INTERACTIVE_LIVE_S = 1.0
# While interactive traffic is live a bulk batch, and the bulk items on top of a query's batch, get this share of
# the budget (tokens, pixels, items): the batch on the device is what a new query waits for, so it is kept short.
BULK_SHARE_WHILE_LIVE = 4


class Queued(Protocol):
    """What the policy reads of a queued item."""

    @property
    def priority(self) -> Priority: ...

    @property
    def queued_at(self) -> float: ...


Entry = TypeVar("Entry", bound=Queued)


@dataclass(frozen=True)
class Turn(Generic[Entry]):
    """The next batch's anchor, the items it may take (in arrival order) and the share of the budget they get; then
    the items that may fill a share of the budget on top (bulk ones, in a query's batch)."""

    anchor: Entry
    pool: list[Entry]
    share: int = 1
    filler: list[Entry] = field(default_factory=list)


class PriorityPolicy:
    """Picks where the next batch comes from; remembers when interactive work was last seen and bulk last served."""

    def __init__(self, bulk_max_wait: float, clock: Callable[[], float]) -> None:
        self.bulk_max_wait = bulk_max_wait
        self.clock = clock
        self._interactive_at = -float("inf")
        self._bulk_served_at = -float("inf")

    def queued(self, priority: Priority) -> None:
        if priority == "interactive":
            self._interactive_at = self.clock()

    def interactive_live(self, now: float) -> bool:
        return now - self._interactive_at <= INTERACTIVE_LIVE_S

    def _overdue(self, bulk: Queued | None, now: float) -> bool:
        return bulk is not None and now - max(bulk.queued_at, self._bulk_served_at) >= self.bulk_max_wait

    def holds_bulk(self, pending: Sequence[Queued]) -> bool:
        """Whether to leave the next bulk batch uncut while another batch is on the device: with queries live, a
        bulk batch cut ahead would stand between the device and the next query (the batch on the device is all a
        query should wait for)."""
        now = self.clock()
        if not self.interactive_live(now) or any(entry.priority == "interactive" for entry in pending):
            return False
        bulk = next((entry for entry in pending if entry.priority == "bulk"), None)
        return bulk is not None and not self._overdue(bulk, now)

    def next_turn(self, pending: Sequence[Entry]) -> Turn[Entry]:
        """`pending` (non-empty, in arrival order): an overdue bulk item first, else the oldest interactive, else
        the oldest bulk. An interactive batch takes interactive items, then bulk ones within a share of the budget
        (they make it a little longer, and bulk keeps moving while queries keep coming); a bulk one may take
        anything that fits its share."""
        now = self.clock()
        interactive = [entry for entry in pending if entry.priority == "interactive"]
        bulk = next((entry for entry in pending if entry.priority == "bulk"), None)
        if interactive and not self._overdue(bulk, now):
            return Turn(interactive[0], interactive, filler=[entry for entry in pending if entry.priority == "bulk"])
        assert bulk is not None
        self._bulk_served_at = now
        share = BULK_SHARE_WHILE_LIVE if interactive or self.interactive_live(now) else 1
        return Turn(bulk, list(pending), share)
