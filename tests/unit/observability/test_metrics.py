"""GET /metrics: every family after traffic, route templates as labels, public unless METRICS_REQUIRE_KEY."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import MediaServer, data_uri, image_bytes, make_image

FAMILIES = {
    "embedding_api_requests",
    "embedding_api_request_duration_seconds",
    "embedding_api_preprocess_seconds",
    "embedding_api_queue_seconds",
    "embedding_api_inference_seconds",
    "embedding_api_batch_size",
    "embedding_api_batch_tokens",
    "embedding_api_queue_depth",
    "embedding_api_items",
    "embedding_api_media_fetch_seconds",
    "embedding_api_media_fetch_bytes",
    "embedding_api_model_info",
}


def scrape(client: TestClient) -> dict[str, list[Sample]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_family_has_samples_after_traffic(client: TestClient, media_server: MediaServer) -> None:
    image = data_uri(image_bytes(make_image(40, 40, seed=3)))
    url = media_server.add("/cat.png", image_bytes(make_image(48, 32, seed=4)))
    inputs = [
        "a text",
        {"type": "image", "data": image},
        {"type": "image_url", "image_url": url},
        {"type": "video", "data": [image, image]},
        [{"type": "text", "text": "a caption"}, {"type": "image", "data": image}],
    ]
    assert client.post("/v1/embeddings", json={"input": inputs}).status_code == 200
    assert client.get("/v1/models/Qwen3-VL-Embedding-2B").status_code == 200
    assert client.get("/no/such/path").status_code == 404

    families = scrape(client)
    assert families.keys() >= FAMILIES
    for name in FAMILIES:
        assert families[name], f"{name} has no samples"

    items = families["embedding_api_items"]
    assert value(items, "embedding_api_items_total", modality="text") == 1
    assert value(items, "embedding_api_items_total", modality="image") == 2
    assert value(items, "embedding_api_items_total", modality="video") == 1
    assert value(items, "embedding_api_items_total", modality="fused") == 1

    requests = families["embedding_api_requests"]
    labels = {(s.labels["route"], s.labels["method"], s.labels["status"]) for s in requests}
    assert ("/v1/embeddings", "POST", "200") in labels
    assert ("/v1/models/{model_id:path}", "GET", "200") in labels  # the template, not the raw path
    assert ("unmatched", "GET", "404") in labels
    assert not any("Qwen3" in route for route, _, _ in labels)

    fetch = families["embedding_api_media_fetch_bytes"]
    assert value(fetch, "embedding_api_media_fetch_bytes_total", media="image") > 0
    assert value(families["embedding_api_media_fetch_seconds"], "embedding_api_media_fetch_seconds_count") == 1
    for name in ("preprocess", "queue", "inference"):
        assert value(families[f"embedding_api_{name}_seconds"], f"embedding_api_{name}_seconds_count") == 1
    assert value(families["embedding_api_batch_size"], "embedding_api_batch_size_sum") >= 5
    assert value(families["embedding_api_batch_tokens"], "embedding_api_batch_tokens_sum") > 0
    assert value(families["embedding_api_queue_depth"], "embedding_api_queue_depth") == 0

    (info,) = families["embedding_api_model_info"]
    assert info.value == 1
    assert info.labels["name"] == "Qwen3-VL-Embedding-2B"
    assert info.labels["device"] == "cpu"
    assert int(info.labels["dimension"]) > 0
    assert info.labels["dtype"]


def test_failed_requests_count_by_status_but_not_their_items(client: TestClient) -> None:
    assert (
        client.post("/v1/embeddings", json={"input": {"type": "image", "data": "bm90IGFuIGltYWdl"}}).status_code == 400
    )
    families = scrape(client)
    assert value(families["embedding_api_requests"], "embedding_api_requests_total", status="400") == 1
    assert value(families["embedding_api_items"], "embedding_api_items_total") == 0


def test_unauthorised_requests_are_labelled_with_their_route(client: TestClient) -> None:
    assert (
        client.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    samples = scrape(client)["embedding_api_requests"]
    assert value(samples, "embedding_api_requests_total", route="/v1/embeddings", status="401") == 1


def test_each_app_has_its_own_registry(make_client: Callable[..., TestClient]) -> None:
    first, second = make_client(), make_client()
    first.post("/v1/embeddings", json={"input": "only in the first"})
    first_count = value(scrape(first)["embedding_api_items"], "embedding_api_items_total")
    second_count = value(scrape(second)["embedding_api_items"], "embedding_api_items_total")
    assert (first_count, second_count) == (1, 0)


def test_metrics_are_public_by_default(client: TestClient) -> None:
    del client.headers["Authorization"]
    assert client.get("/metrics").status_code == 200


def test_metrics_require_key_puts_them_behind_the_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(metrics_require_key=True)
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 200
    del client.headers["Authorization"]
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
