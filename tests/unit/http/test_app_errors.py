"""Every error over HTTP in OpenAI's shape: the app's error handlers and the embeddings route's refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from embedding_api.families.base import EmbeddingFamily
from tests.conftest import MediaServer, data_uri, image_bytes, make_image

MODEL = "Qwen3-VL-Embedding-2B"


def embed(client: TestClient, **body: Any) -> Response:
    return client.post("/v1/embeddings", json=body)


def openai_error(response: Response, status: int) -> dict[str, Any]:
    """Assert the status and the exact OpenAI error shape; return the inner error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    inner: dict[str, Any] = error
    return inner


# ---- refusals -------------------------------------------------------------------------------------------------


def test_wrong_model_is_404_naming_the_served_model(client: TestClient) -> None:
    error = openai_error(embed(client, input="hi", model="text-embedding-3-small"), 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "text-embedding-3-small" in error["message"]
    assert MODEL in error["message"]


def test_model_may_be_omitted(client: TestClient) -> None:
    response = embed(client, input="hi")
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


def test_wrong_model_with_a_custom_name(make_client: Callable[..., TestClient]) -> None:
    custom = make_client(model_name="my-embedder")
    error = openai_error(embed(custom, input="hi", model=MODEL), 404)
    assert "my-embedder" in error["message"]
    assert embed(custom, input="hi", model="my-embedder").status_code == 200


@pytest.mark.parametrize("dimensions", [0, -1, -1024, "dimension+1"])
def test_dimensions_out_of_range(client: TestClient, tiny_family: EmbeddingFamily, dimensions: Any) -> None:
    size = tiny_family.dimension + 1 if dimensions == "dimension+1" else dimensions
    error = openai_error(embed(client, input="hi", dimensions=size), 400)
    assert error["param"] == "dimensions"
    assert error["type"] == "invalid_request_error"
    assert str(tiny_family.dimension) in error["message"]


@pytest.mark.parametrize("dimensions", ["abc", 1.5, [4]])
def test_dimensions_of_the_wrong_type(client: TestClient, dimensions: Any) -> None:
    error = openai_error(embed(client, input="hi", dimensions=dimensions), 400)
    assert error["param"] == "dimensions"


def test_dimensions_at_the_bounds_are_accepted(client: TestClient, tiny_family: EmbeddingFamily) -> None:
    for size in (1, tiny_family.dimension):
        response = embed(client, input="hi", dimensions=size, encoding_format="float")
        assert response.status_code == 200
        assert len(response.json()["data"][0]["embedding"]) == size


@pytest.mark.parametrize("encoding_format", ["int4", "FLOAT", "", 5, None])
def test_bad_encoding_format(client: TestClient, encoding_format: Any) -> None:
    error = openai_error(embed(client, input="hi", encoding_format=encoding_format), 400)
    assert error["param"] == "encoding_format"


def test_invalid_json(client: TestClient) -> None:
    response = client.post("/v1/embeddings", content=b'{"input": "hi",', headers={"Content-Type": "application/json"})
    error = openai_error(response, 400)
    assert "JSON" in error["message"]


def test_empty_body(client: TestClient) -> None:
    response = client.post("/v1/embeddings", content=b"", headers={"Content-Type": "application/json"})
    openai_error(response, 400)


@pytest.mark.parametrize("payload", [b'["hi"]', b'"hi"', b"42", b"null"])
def test_body_that_is_not_an_object(client: TestClient, payload: bytes) -> None:
    response = client.post("/v1/embeddings", content=payload, headers={"Content-Type": "application/json"})
    error = openai_error(response, 400)
    assert "object" in error["message"]


def test_missing_input(client: TestClient) -> None:
    error = openai_error(embed(client, model=MODEL), 400)
    assert error["param"] == "input"
    assert "required" in error["message"]


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]], ids=["flat", "nested"])
def test_token_ids(client: TestClient, tokens: list[Any]) -> None:
    error = openai_error(embed(client, input=tokens, model=MODEL), 400)
    assert error["code"] == "token_ids_not_supported"
    assert error["param"] == "input"
    assert "check_embedding_ctx_length=False" in error["message"]


def test_empty_input(client: TestClient) -> None:
    assert openai_error(embed(client, input=[]), 400)["param"] == "input"


def test_too_many_inputs(make_client: Callable[..., TestClient]) -> None:
    small = make_client(max_inputs_per_request=2)
    error = openai_error(embed(small, input=["a", "b", "c"]), 400)
    assert error["param"] == "input"


def test_undecodable_image_names_its_index(client: TestClient) -> None:
    good = data_uri(image_bytes(make_image(32, 32)))
    bad = data_uri(b"this is not an image")
    inputs = ["a", {"type": "image", "data": good}, "c", {"type": "image", "data": bad}]
    error = openai_error(embed(client, input=inputs, model=MODEL), 400)
    assert error["param"] == "input[3]"
    assert error["message"].startswith("input[3]")
    assert error["code"] == "media_decode"


def test_unreachable_image_url(client: TestClient, media_server: MediaServer) -> None:
    url = media_server.add("/missing.png", b"no", "text/plain", status=404)
    error = openai_error(embed(client, input=["a", {"type": "image_url", "image_url": {"url": url}}]), 400)
    assert error["param"] == "input[1]"
    assert "HTTP 404" in error["message"]
    assert error["code"] == "media_fetch"
    assert media_server.hits["/missing.png"] == 1


def test_unknown_part_type_over_http(client: TestClient) -> None:
    error = openai_error(embed(client, input=["a", ["b", {"type": "audio"}]]), 400)
    assert error["param"] == "input[1][1]"


def test_unknown_route(client: TestClient) -> None:
    error = openai_error(client.get("/v1/nothing-here"), 404)
    assert error["code"] == "not_found"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/embeddings"), ("DELETE", "/v1/models"), ("POST", "/health")])
def test_wrong_method(client: TestClient, method: str, path: str) -> None:
    error = openai_error(client.request(method, path), 405)
    assert error["code"] == "method_not_allowed"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_curl_style_body_without_json_content_type(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(
        "/v1/embeddings", content=b'{"input": ["hello", "world"], "model": "' + MODEL.encode() + b'"}', headers=headers
    )
    assert response.status_code == 200, response.text
    assert [entry["index"] for entry in response.json()["data"]] == [0, 1]


# ---- strict types and our own param names ----------------------------------------------------------------------


@pytest.mark.parametrize("dimensions", [True, False, "8", 8.0])
def test_dimensions_must_be_a_json_integer(client: TestClient, dimensions: Any) -> None:
    error = openai_error(embed(client, input="hi", dimensions=dimensions), 400)
    assert error["param"] == "dimensions"
    assert error["message"] == "dimensions: must be an integer"


@pytest.mark.parametrize("field", ["normalize", "truncate"])
@pytest.mark.parametrize("value", ["no", "true", 0, 1, None])
def test_flags_must_be_json_booleans(client: TestClient, field: str, value: Any) -> None:
    error = openai_error(embed(client, input="hi", **{field: value}), 400)
    assert error["param"] == field
    assert error["message"] == f"{field}: must be a boolean"


def test_real_booleans_and_integers_are_still_accepted(client: TestClient) -> None:
    response = embed(client, input="hi", dimensions=4, normalize=False, truncate=True)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 4


@pytest.mark.parametrize("value", [5, None, True, 1.5])
def test_input_of_the_wrong_type_names_input_not_a_pydantic_branch(client: TestClient, value: Any) -> None:
    error = openai_error(embed(client, input=value), 400)
    assert error["param"] == "input"
    assert error["message"] == "input: must be a string, an array or an object"


def test_older_route_list_items_are_named_with_brackets(client: TestClient) -> None:
    error = openai_error(client.post("/embed/texts", json={"texts": ["a", 3]}), 400)
    assert error["param"] == "texts[1]"
    assert error["message"] == "texts[1]: must be a string"
