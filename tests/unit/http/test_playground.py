"""`embedding_api.http.playground`: the page at `/` is served without a key; the API behind it still needs one.

The page driven in a real headless Chromium is in tests/e2e/test_playground.py."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_page_is_public_html(client: TestClient) -> None:
    del client.headers["Authorization"]
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Embedding playground" in response.text
    assert "v1/embeddings" in response.text
    assert "only meaningful with real weights" in response.text
    assert 'id="precision"' in response.text and "embedding_types" in response.text  # the precision selector
    assert "http://" not in response.text and "https://" not in response.text  # no external resources


def test_embeddings_still_need_a_key(client: TestClient) -> None:
    del client.headers["Authorization"]
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 401
