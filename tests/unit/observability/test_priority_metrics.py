"""The priority label: queue depth by priority at scrape time, and each request's items and queue wait counted
under the priority its items were queued with (interactive when nothing says otherwise)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from embedding_api.families.base import PreparedItem
from embedding_api.items import Priority
from embedding_api.observability.logs import RequestRecord, current_request
from embedding_api.observability.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_queue_depth_by_priority() -> None:
    depth: dict[Priority, int] = {"interactive": 2, "bulk": 2048}
    metrics = Metrics(queue_depth=lambda: depth)
    assert samples(metrics, "embedding_api_queue_depth") == {
        (("priority", "interactive"),): 2,
        (("priority", "bulk"),): 2048,
    }


def finished_request(metrics: Metrics, priority: Priority | None, items: int, queue_ms: float) -> None:
    """One request through the hooks, as the engine and the middleware call them."""
    record = RequestRecord(request_id="r", method="POST", route="/v1/embeddings", status=200)
    token = current_request.set(record)
    try:
        if priority is not None:  # the engine's hook counts the items by modality
            metrics.items_queued([PreparedItem(payload=None, tokens=1, modalities=("text",))] * items, priority)
        else:
            record.modalities["text"] += items
    finally:
        current_request.reset(token)
    record.queue_ms = queue_ms
    metrics.observe_request(record, 0.1)


def test_items_and_queue_wait_are_labelled_with_the_priority() -> None:
    metrics = Metrics()
    finished_request(metrics, "bulk", items=5, queue_ms=1500)
    finished_request(metrics, "interactive", items=1, queue_ms=4)
    finished_request(metrics, None, items=2, queue_ms=8)  # never queued with a priority: counted interactive
    items = samples(metrics, "embedding_api_items_total")
    assert items == {
        (("modality", "text"), ("priority", "bulk")): 5,
        (("modality", "text"), ("priority", "interactive")): 3,
    }
    waits = samples(metrics, "embedding_api_queue_seconds_sum")
    assert waits[(("priority", "bulk"),)] == 1.5
    assert abs(waits[(("priority", "interactive"),)] - 0.012) < 1e-9
    counts = samples(metrics, "embedding_api_queue_seconds_count")
    assert counts == {(("priority", "bulk"),): 1, (("priority", "interactive"),): 2}
