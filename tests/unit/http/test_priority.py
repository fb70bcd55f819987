"""`priority` on /v1/embeddings and /v1/rerank: the body's field, else the X-Priority header, else interactive; an
unknown value is a 400 naming `priority`. Which priority reached the engine is read back from /metrics (the engine
hands it to the metrics hook with the items)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def items_by_priority(client: TestClient) -> dict[str, float]:
    counts = {"interactive": 0.0, "bulk": 0.0}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "embedding_api_items_total":
                counts[sample.labels["priority"]] += sample.value
    return counts


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        ({}, None, "interactive"),
        ({}, "bulk", "bulk"),
        ({}, " Bulk ", "bulk"),
        ({"priority": "bulk"}, None, "bulk"),
        ({"priority": "interactive"}, "bulk", "interactive"),  # the body wins
        ({"priority": "bulk"}, "interactive", "bulk"),
        ({"priority": "bulk"}, "urgent", "bulk"),  # the body wins: the header is not read
    ],
)
def test_priority_from_the_body_else_the_header(
    client: TestClient, body: dict[str, str], header: str | None, expected: str
) -> None:
    headers = {"X-Priority": header} if header is not None else {}
    response = client.post("/v1/embeddings", json={"input": ["one", "two"], **body}, headers=headers)
    assert response.status_code == 200, response.text
    other = "bulk" if expected == "interactive" else "interactive"
    assert items_by_priority(client) == {expected: 2, other: 0}


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/rerank"])
def test_an_unknown_priority_in_the_body_is_a_400_naming_it(client: TestClient, route: str) -> None:
    body = {"input": "x", "query": "x", "documents": ["y"], "priority": "urgent"}
    response = client.post(route, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "priority"
    assert error["type"] == "invalid_request_error"
    assert "interactive" in error["message"] and "bulk" in error["message"]


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/rerank", "/embed/text"])
def test_an_unknown_priority_header_is_a_400_naming_it(client: TestClient, route: str) -> None:
    body = {"input": "x", "query": "x", "documents": ["y"], "text": "x"}
    response = client.post(route, json=body, headers={"X-Priority": "urgent"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "priority"
    assert "X-Priority" in error["message"] and "'urgent'" in error["message"]
    assert items_by_priority(client) == {"interactive": 0, "bulk": 0}


def test_the_seed_routes_take_the_header(client: TestClient) -> None:
    response = client.post("/embed/texts", json={"texts": ["a", "b", "c"]}, headers={"X-Priority": "bulk"})
    assert response.status_code == 200
    assert items_by_priority(client) == {"interactive": 0, "bulk": 3}
