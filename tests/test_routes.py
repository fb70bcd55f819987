"""Route behaviour that involves the engine: back-pressure answers, timing headers, client disconnects."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
from fastapi.testclient import TestClient

from embedding_api.families.base import EmbeddingFamily
from tests.conftest import API_KEY, LiveServer, MediaServer, image_bytes, make_image, make_settings
from tests.test_engine import RecordingFamily


def test_timing_headers_are_milliseconds(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": ["a", "b"]})
    assert response.status_code == 200
    queue, inference, total = (float(response.headers[h]) for h in ("x-queue-time", "x-inference-time", "x-total-time"))
    assert 0 <= queue <= total and 0 < inference <= total < 60_000


def test_full_queue_answers_429_with_retry_after(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_queued_items=2)
    response = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert client.post("/v1/embeddings", json={"input": ["a", "b"]}).status_code == 200


def test_too_many_concurrent_requests_answers_429(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_concurrent_requests=1)
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    service.in_progress = 1  # as if one request were in flight
    response = client.post("/v1/embeddings", json={"input": "x"})
    assert response.status_code == 429 and "Retry-After" in response.headers
    service.in_progress = 0
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_disconnected_client_frees_its_queued_items(tiny_model_dir: object, tiny_family: EmbeddingFamily) -> None:
    gate = threading.Event()
    family = RecordingFamily(tiny_family, gate=gate)
    gate.set()  # let the warm-up through
    with LiveServer(make_settings(tiny_model_dir, max_batch_size=1), family) as server:  # type: ignore[arg-type]
        gate.clear()
        engine = server.app.state.runtime.engine
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(
                f"{server.url}/v1/embeddings", json={"input": [f"t{i}" for i in range(6)]}, headers=headers, timeout=0.5
            )
        deadline = time.monotonic() + 5
        while engine.queued_items and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.queued_items == 0
        ran_before = sum(family.batch_sizes)
        gate.set()
        ok = httpx.post(f"{server.url}/v1/embeddings", json={"input": "after"}, headers=headers, timeout=30)
        assert ok.status_code == 200
        assert np.isfinite(np.array(ok.json()["data"][0]["embedding"])).all()
        assert sum(family.batch_sizes) - ran_before <= 3  # at most the batches already cut, plus this request


def test_body_over_the_limit_answers_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_request_bytes=4096)
    response = client.post("/v1/embeddings", json={"input": "a" * 5000})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/embeddings", json={"input": "a" * 100}).status_code == 200


def test_huge_text_is_shortened_to_max_length(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "word " * 190_000})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] <= 8192


def test_only_the_frames_the_model_sees_are_fetched(client: TestClient, media_server: MediaServer) -> None:
    frame = image_bytes(make_image(32, 32, seed=1))
    urls = [media_server.add(f"/f{i}.png", frame) for i in range(100)]
    response = client.post("/v1/embeddings", json={"input": {"type": "video", "data": urls}})
    assert response.status_code == 200
    assert sum(media_server.hits.values()) == 64
