"""The app over a request's life: request timeout, over-long text, request limits, health that turns red when the
engine keeps failing, and requests cut off when SHUTDOWN_TIMEOUT runs out.

Draining a real server process on SIGTERM is in tests/e2e/test_lifecycle.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from embedding_api.families.base import EmbeddingFamily
from embedding_api.http.app import create_app
from tests.conftest import API_KEY, make_settings, wait_ready
from tests.fakes import RecordingFamily


def test_request_timeout_fails_cleanly_and_drops_queued_items(
    make_client: Callable[..., TestClient], tiny_family: EmbeddingFamily
) -> None:
    client = make_client(request_timeout=0.3)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    gate = threading.Event()
    runtime.engine.family = RecordingFamily(tiny_family, gate=gate)
    try:
        response = client.post("/v1/embeddings", json={"input": [f"t{i}" for i in range(5)]})
        assert response.status_code == 504
        assert "REQUEST_TIMEOUT" in response.json()["error"]["message"]
        assert runtime.engine.queued_items == 0
    finally:
        gate.set()
        runtime.engine.family = tiny_family
    assert client.post("/v1/embeddings", json={"input": "after"}).status_code == 200


def test_truncate_false_refuses_over_long_text(tiny_model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tiny_model_dir, max_length=48))) as client:
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        long_text = "many words in a row " * 50
        refused = client.post("/v1/embeddings", json={"input": ["short", long_text], "truncate": False})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "input[1]"
        assert refused.json()["error"]["code"] == "input_too_long"
        shortened = client.post("/v1/embeddings", json={"input": ["short", long_text]})
        assert shortened.status_code == 200
        assert shortened.json()["usage"]["prompt_tokens"] <= 2 * 48


def test_request_token_and_text_limits(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_tokens_per_request=100, max_text_chars=50)
    too_many = client.post("/v1/embeddings", json={"input": ["a few words"] * 10})
    assert too_many.status_code == 400 and "MAX_TOKENS_PER_REQUEST" in too_many.json()["error"]["message"]
    too_long = client.post("/v1/embeddings", json={"input": ["ok", "x" * 51]})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "input[1]"


def test_health_turns_red_when_the_engine_keeps_failing(
    make_client: Callable[..., TestClient], tiny_family: EmbeddingFamily
) -> None:
    client = make_client()
    engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
    broken = RecordingFamily(tiny_family)
    broken.poison = {"<|im_start|>"}  # every prompt contains it: every batch fails
    engine.family = broken
    for _ in range(3):
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 500
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "error"
    engine.family = tiny_family  # the fault clears: the canary succeeds and health is green again
    assert client.get("/health").status_code == 200


def test_bad_inputs_do_not_make_health_red(client: TestClient) -> None:
    for _ in range(5):
        response = client.post("/v1/embeddings", json={"input": {"type": "image", "data": "not-an-image!"}})
        assert response.status_code == 400
    assert client.get("/health").status_code == 200


def test_requests_still_running_when_shutdown_timeout_runs_out_get_503_json(
    make_client: Callable[..., TestClient], tiny_family: EmbeddingFamily
) -> None:
    client = make_client()
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    gate = threading.Event()
    runtime.engine.family = RecordingFamily(tiny_family, gate=gate)  # the forward pass waits for the gate
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/v1/embeddings", json={"input": ["long", "job"]})
            deadline = time.monotonic() + 10
            while not runtime.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.portal is not None
            client.portal.call(runtime.expire_requests)  # what DrainingServer does shortly before SHUTDOWN_TIMEOUT
            response = pending.result(timeout=10)
    finally:
        gate.set()
        runtime.engine.family = tiny_family
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    error = response.json()["error"]
    assert error["code"] == "shutting_down" and "SHUTDOWN_TIMEOUT" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert not runtime.requests


def test_a_cancelled_request_outside_shutdown_is_not_answered_503(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.shutdown_expired is False
    assert client.post("/v1/embeddings", json={"input": "fine"}).status_code == 200
    assert not runtime.requests  # every finished request leaves the list
