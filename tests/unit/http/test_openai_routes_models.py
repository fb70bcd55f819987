"""`GET /v1/models` and `GET /v1/models/{name}` in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

MODEL = "Qwen3-VL-Embedding-2B"


def assert_model_card(card: dict[str, Any], name: str) -> None:
    assert set(card) == {
        "id",
        "object",
        "created",
        "owned_by",
        "family",
        "dimension",
        "modalities",
        "matryoshka",
        "status",
        "quantization",
        "input_types",
    }
    assert card["id"] == name
    assert (card["family"], card["dimension"], card["modalities"], card["matryoshka"], card["status"]) == (
        "qwen3_vl",
        64,
        ["image", "text", "video"],
        True,
        "ok",
    )
    assert card["object"] == "model"
    assert isinstance(card["created"], int) and card["created"] > 1_600_000_000
    assert isinstance(card["owned_by"], str) and card["owned_by"]


def assert_model_not_found(response: Any, asked: str, served: str) -> None:
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert asked in error["message"] and served in error["message"]


def test_list_models_shape(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"object", "data"}
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    assert_model_card(body["data"][0], MODEL)


def test_list_models_with_a_custom_name(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model_name="custom")
    [card] = client.get("/v1/models").json()["data"]
    assert_model_card(card, "custom")


def test_get_served_model(client: TestClient) -> None:
    response = client.get(f"/v1/models/{MODEL}")
    assert response.status_code == 200
    card = response.json()
    assert_model_card(card, MODEL)
    assert card == client.get("/v1/models").json()["data"][0]


@pytest.mark.parametrize("other", ["text-embedding-3-small", "custom", MODEL.lower(), f"{MODEL}-x"])
def test_get_other_model_is_404(client: TestClient, other: str) -> None:
    assert_model_not_found(client.get(f"/v1/models/{other}"), other, MODEL)


def test_get_with_a_custom_name(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model_name="custom")
    assert_model_card(client.get("/v1/models/custom").json(), "custom")
    assert_model_not_found(client.get(f"/v1/models/{MODEL}"), MODEL, "custom")


def test_a_served_name_with_a_slash(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model_name="Qwen/Qwen3-VL-Embedding-2B")
    response = client.get("/v1/models/Qwen/Qwen3-VL-Embedding-2B")
    assert response.status_code == 200
    assert_model_card(response.json(), "Qwen/Qwen3-VL-Embedding-2B")
    listed = client.get("/v1/models").json()["data"][0]["id"]
    assert listed == "Qwen/Qwen3-VL-Embedding-2B"
    embedded = client.post("/v1/embeddings", json={"input": "hi", "model": listed})
    assert embedded.status_code == 200
    assert embedded.json()["model"] == listed


def test_the_listed_name_is_accepted_by_embeddings(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model_name="custom")
    listed = client.get("/v1/models").json()["data"][0]["id"]
    response = client.post("/v1/embeddings", json={"input": "hi", "model": listed})
    assert response.status_code == 200
    assert response.json()["model"] == "custom"
