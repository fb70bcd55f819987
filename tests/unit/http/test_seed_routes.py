"""The seed's simple routes: same engine, auth and error shape; the same vectors as /v1/embeddings."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from embedding_api import __version__
from tests.conftest import b64, data_uri, image_bytes, make_image

PNG = image_bytes(make_image(48, 40, seed=11))


def v1(client: TestClient, input: Any) -> list[list[float]]:
    response = client.post("/v1/embeddings", json={"input": input})
    assert response.status_code == 200
    return [row["embedding"] for row in response.json()["data"]]


def check_single(body: dict[str, Any]) -> list[float]:
    assert set(body) == {"embedding", "dimension", "model", "version"}
    assert body["dimension"] == len(body["embedding"]) > 0
    assert body["model"] == "Qwen3-VL-Embedding-2B"
    assert body["version"] == __version__
    vector: list[float] = body["embedding"]
    return vector


def test_embed_text_matches_v1(client: TestClient) -> None:
    response = client.post("/embed/text", json={"text": "a red bicycle"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert check_single(response.json()) == v1(client, "a red bicycle")[0]


def test_embed_texts_matches_v1(client: TestClient) -> None:
    texts = ["one", "two words", "and three words"]
    response = client.post("/embed/texts", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"embeddings", "dimension", "model", "version"}
    assert len(body["embeddings"]) == 3 and all(len(row) == body["dimension"] for row in body["embeddings"])
    assert body["version"] == __version__
    assert body["embeddings"] == v1(client, texts)


def test_embed_image_upload_matches_v1(client: TestClient) -> None:
    response = client.post("/embed/image", files={"file": ("cat.png", PNG, "image/png")})
    assert response.status_code == 200, response.text
    assert check_single(response.json()) == v1(client, {"type": "image", "data": b64(PNG)})[0]


@pytest.mark.parametrize("encode", [b64, data_uri])
def test_embed_image_base64_matches_v1(client: TestClient, encode: Any) -> None:
    response = client.post("/embed/image/base64", json={"image_base64": encode(PNG)})
    assert response.status_code == 200, response.text
    assert check_single(response.json()) == v1(client, {"type": "image", "data": b64(PNG)})[0]


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/embed/text", {"json": {"text": "x"}}),
        ("/embed/texts", {"json": {"texts": ["x"]}}),
        ("/embed/image/base64", {"json": {"image_base64": b64(PNG)}}),
        ("/embed/image", {"files": {"file": ("x.png", PNG, "image/png")}}),
    ],
)
def test_the_key_is_required(client: TestClient, path: str, kwargs: dict[str, Any]) -> None:
    del client.headers["Authorization"]
    response = client.post(path, **kwargs)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("path", "kwargs", "param"),
    [
        ("/embed/text", {"json": {"text": ""}}, "text"),
        ("/embed/text", {"json": {}}, "text"),
        ("/embed/text", {"json": {"text": 5}}, "text"),
        ("/embed/text", {"content": b"{not json"}, None),
        ("/embed/texts", {"json": {"texts": []}}, "texts"),
        ("/embed/texts", {"json": {"texts": "not a list"}}, "texts"),
        ("/embed/texts", {"json": {"texts": ["fine", ""]}}, "texts[1]"),
        ("/embed/image/base64", {"json": {"image_base64": b64(b"not an image at all")}}, "image_base64"),
        ("/embed/image/base64", {"json": {"image_base64": "%%% not base64 %%%"}}, "image_base64"),
        ("/embed/image/base64", {"json": {"image_base64": "http://example.com/x.png"}}, "image_base64"),
        ("/embed/image/base64", {"json": {"image_base64": ""}}, "image_base64"),
        ("/embed/image", {"files": {"file": ("x.png", b"not an image", "image/png")}}, "file"),
        ("/embed/image", {"files": {"other": ("x.png", PNG, "image/png")}}, "file"),
        ("/embed/image", {"files": {"file": ("x.png", b"", "image/png")}}, "file"),
        ("/embed/image", {"json": {"file": b64(PNG)}}, "file"),
    ],
)
def test_bad_input_is_400_in_the_openai_shape(
    client: TestClient, path: str, kwargs: dict[str, Any], param: str | None
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "input[" not in error["message"]


def test_a_too_large_upload_is_413(make_client: Any) -> None:
    client = make_client(max_request_bytes=2048)
    big = image_bytes(make_image(128, 128, seed=1))
    assert len(big) > 2048
    response = client.post("/embed/image", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
