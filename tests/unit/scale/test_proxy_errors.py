"""The proxy's own answers (no `x-replica`) in our error shape, a lost replica as a retryable 503, and our app's
answers untouched."""

from __future__ import annotations

from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from embedding_api.scale.proxy_errors import ProxyErrorsMiddleware, proxy_middlewares


def _proxy(status: int | None, headers: list[tuple[bytes, bytes]] | None = None, raises: bool = False) -> TestClient:
    """A stand-in for Serve's proxy: answers `status` (plain text), or nothing, or raises before answering."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if raises:
            raise RuntimeError("ActorDiedError: the replica died")
        if status is None:
            return
        start_headers = [(b"content-type", b"text/plain"), *(headers or [])]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        await send({"type": "http.response.body", "body": b"Service Unavailable"})

    return TestClient(ProxyErrorsMiddleware(app), raise_server_exceptions=False)


def test_a_lost_replica_is_a_retryable_503_in_our_shape() -> None:
    for client in (_proxy(None), _proxy(None, raises=True), _proxy(500), _proxy(502)):
        answer = client.post("/v1/embeddings", json={"input": "hi"})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["type"] == "service_unavailable" and error["code"] == "not_ready"
        assert "retry" in error["message"]


def test_the_proxys_own_errors_take_our_shape() -> None:
    no_replica = _proxy(503).get("/health")
    assert no_replica.status_code == 503 and no_replica.json()["error"]["code"] == "not_ready"
    full = _proxy(429).post("/v1/embeddings")
    assert full.status_code == 429 and full.json()["error"]["type"] == "rate_limit_error"
    assert full.headers["retry-after"] == "1"
    late = _proxy(408).post("/v1/embeddings")
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    assert "retry-after" not in late.headers


def test_answers_from_a_replica_and_the_proxys_successes_pass_untouched() -> None:
    ours = _proxy(503, [(b"x-replica", b"abc")]).get("/health")
    assert (ours.status_code, ours.text, ours.headers["x-replica"]) == (503, "Service Unavailable", "abc")
    healthz = _proxy(200).get("/-/healthz")
    assert (healthz.status_code, healthz.text) == (200, "Service Unavailable")  # the stand-in's body, as sent
    missing = _proxy(404).get("/nowhere")
    assert missing.status_code == 404 and missing.text == "Service Unavailable"


def test_the_callback_gives_the_middleware() -> None:
    (middleware,) = proxy_middlewares()
    assert middleware.cls is ProxyErrorsMiddleware  # type: ignore[comparison-overlap]
