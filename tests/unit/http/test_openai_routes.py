"""`embedding_api.http.openai_routes`, behaviour that involves the engine: back-pressure answers, timing headers,
admission before the body is read and the body's own deadline.

A client that disconnects from a real server is in tests/e2e/test_client_disconnect.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.conftest import API_KEY, MediaServer, image_bytes, make_image


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
    service = client.app.state.runtime.admission  # type: ignore[attr-defined]
    service.in_progress = 1  # as if one request were in flight
    response = client.post("/v1/embeddings", json={"input": "x"})
    assert response.status_code == 429 and "Retry-After" in response.headers
    service.in_progress = 0
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


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


# ---- admission before the body, and the body's own deadline -----------------------------------------------------


class RecordingReceive:
    """An ASGI receive that hands out `chunks` (one per call, after `delay` seconds each) and counts the calls."""

    def __init__(self, chunks: list[bytes], delay: float = 0.0) -> None:
        self.chunks = chunks
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> dict[str, object]:
        import asyncio

        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.calls > len(self.chunks):
            await asyncio.sleep(3600)  # the client holds the rest of its body
        more = self.calls < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.calls - 1], "more_body": more}


def call_app(client: TestClient, path: str, receive: RecordingReceive, headers: list[tuple[bytes, bytes]]) -> dict:
    """POST `path` straight into the ASGI app on the client's own event loop; the answer's status, headers, body."""
    answer: dict = {"body": b""}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {API_KEY}".encode()), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    return answer


@pytest.mark.parametrize(
    "path", ["/v1/embeddings", "/embed/text", "/embed/texts", "/embed/image/base64", "/embed/image"]
)
def test_past_max_concurrent_requests_the_body_is_not_read(make_client: Callable[..., TestClient], path: str) -> None:
    client = make_client(max_concurrent_requests=1)
    service = client.app.state.runtime.admission  # type: ignore[attr-defined]
    service.in_progress = 1  # as if one request were in flight
    receive = RecordingReceive([b'{"input": "' + b"a" * 1_000_000 + b'"}'])
    content_type = b"multipart/form-data; boundary=x" if path == "/embed/image" else b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", b"60000000")]
    answer = call_app(client, path, receive, headers)
    service.in_progress = 0
    assert answer["status"] == 429 and answer["headers"][b"retry-after"] == b"1"
    assert receive.calls == 0  # refused before a byte of the body was read
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


def test_a_body_slower_than_body_read_timeout_is_answered_408(make_client: Callable[..., TestClient]) -> None:
    client = make_client(body_read_timeout=0.3)
    service = client.app.state.runtime.admission  # type: ignore[attr-defined]
    receive = RecordingReceive([b'{"input": ', b'"a', b"b"], delay=0.2)  # ... and then nothing
    started = time.perf_counter()
    answer = call_app(client, "/v1/embeddings", receive, [(b"content-type", b"application/json")])
    took = time.perf_counter() - started
    assert answer["status"] == 408
    error = json.loads(answer["body"])["error"]
    assert error["code"] == "body_timeout" and "BODY_READ_TIMEOUT=0.3" in error["message"]
    assert 0.3 <= took < 1.5
    assert service.in_progress == 0  # the slot is free again


def test_a_body_within_body_read_timeout_is_served(make_client: Callable[..., TestClient]) -> None:
    client = make_client(body_read_timeout=2)
    receive = RecordingReceive([b'{"input": ', b'"slow but steady"}'], delay=0.1)
    answer = call_app(client, "/v1/embeddings", receive, [(b"content-type", b"application/json")])
    assert answer["status"] == 200, answer


def test_a_big_body_is_parsed_off_the_event_loop(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedding_api.http.body as request_body

    client = make_client()
    threads: list[str] = []
    parse = request_body.parse_body

    def recording_parse(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return parse(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(request_body, "parse_body", recording_parse)
    monkeypatch.setattr(request_body, "THREAD_PARSE_BYTES", 1000)  # 1 MiB in the server
    small = client.post("/v1/embeddings", json={"input": "small"})
    big = client.post("/v1/embeddings", json={"input": ["big"] * 300})
    assert (small.status_code, big.status_code) == (200, 200)
    loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
    assert threads[0] == loop_thread and threads[1] != loop_thread


def test_a_body_of_too_many_json_values_is_413(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_json_values=1000)
    response = client.post("/v1/embeddings", content=b'{"input": [' + b"[0]," * 1000 + b"[0]]}")
    assert response.status_code == 413
    assert "MAX_JSON_VALUES=1000" in response.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": ["a, b, c: [d] {e}"] * 100}).status_code == 200
