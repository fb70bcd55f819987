"""Property-based fuzzing of every operation against our own OpenAPI schema, in-process over ASGI.

The app runs the real tiny model and is READY before fuzzing starts, so generated requests reach the
embedding path, not just 503s. Every response must: not be a 5xx, have a status code the schema declares
for that operation, have the declared content type, and match the declared body schema.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from embedding_api.families.base import EmbeddingFamily
from embedding_api.http.app import create_app
from tests.conftest import API_KEY, b64, image_bytes, make_image, make_settings, wait_ready

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 40


# Function scope: schemathesis's pytest plugin ends every ASGI lifespan when a test ends.
@pytest.fixture
def fuzz_app(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> Iterator[Any]:
    # No media URL may reach this machine's own services while fuzzing.
    settings = make_settings(tiny_model_dir, allow_private_media_urls=False, request_timeout=30)
    app = create_app(settings, loader=lambda *_: tiny_family)
    with asgi.get_client(app) as client:  # starts the lifespan (kept until shutdown_lifespans)
        wait_ready(client)
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture
def fuzz_client(fuzz_app: Any) -> Iterator[asgi.ASGIClient]:
    with asgi.get_client(fuzz_app) as client:
        client.headers.update(AUTH)
        yield client


@pytest.fixture
def api_schema(fuzz_app: Any) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    schema.config.update(headers=AUTH)
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        deterministic=True,
        database="none",
    )
    return schema


def _schema_operations() -> list[tuple[str, str, bool]]:
    """(method, path, has a request body) for every operation the schema lists (no model needed for this)."""
    spec = create_app(make_settings("unused-model-path")).openapi()
    return sorted(
        (method.upper(), path, "requestBody" in operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    )


OPERATIONS = _schema_operations()
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# Negative data needs something that can be invalid: a request body (the GETs take nothing, or a free-form
# string path parameter that no value can violate).
FUZZ_RUNS = [(method, path, POSITIVE) for method, path, _ in OPERATIONS] + [
    (method, path, NEGATIVE) for method, path, has_body in OPERATIONS if has_body
]
# Routes where random schema-valid bodies are often embeddable: fuzzing them must reach real embedding.
MUST_EMBED = {"/v1/embeddings", "/embed/text", "/embed/texts"}


def test_fuzzed_operations_are_all_operations(api_schema: schemathesis.BaseSchema) -> None:
    found = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert found == {(method, path) for method, path, _ in OPERATIONS}
    assert {
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("GET", "/health"),
    } <= found


@pytest.mark.parametrize(
    ("method", "path", "mode"), FUZZ_RUNS, ids=[f"{m} {p} {mode.value}" for m, p, mode in FUZZ_RUNS]
)
def test_every_operation_conforms(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: schemathesis.GenerationMode
) -> None:
    operation = api_schema[path][method]
    seen: list[int] = []

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=AUTH, checks=CHECKS)
        seen.append(response.status_code)

    fuzz()
    print(f"{method} {path} {mode.value}: {dict(sorted(Counter(seen).items()))}")
    assert seen
    if path in MUST_EMBED and mode is POSITIVE:
        assert 200 in seen, f"no generated request was embedded: {sorted(set(seen))}"


IMAGE_PNG = image_bytes(make_image(32, 32, seed=3))
SERVED = make_settings("unused-model-path").model_name
# Valid requests the fuzzer rarely builds by chance; each must be a 200 that conforms like the fuzzed ones.
KNOWN_GOOD: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/models/{model_id}", {"path_parameters": {"model_id": SERVED}}),
    ("POST", "/v1/embeddings", {"body": {"input": "hello", "model": SERVED}}),
    ("POST", "/v1/embeddings", {"body": {"input": ["a", "b"], "encoding_format": "base64", "dimensions": 8}}),
    ("POST", "/v1/embeddings", {"body": {"input": {"type": "image", "image": b64(IMAGE_PNG)}, "normalize": False}}),
    ("POST", "/embed/text", {"body": {"text": "hello"}}),
    ("POST", "/embed/texts", {"body": {"texts": ["a", "b", "c"]}}),
    ("POST", "/embed/image/base64", {"body": {"image_base64": b64(IMAGE_PNG)}}),
    ("POST", "/embed/image", {"body": {"file": IMAGE_PNG}, "media_type": "multipart/form-data"}),
]


@pytest.mark.parametrize(("method", "path", "parts"), KNOWN_GOOD, ids=[f"{m} {p}" for m, p, _ in KNOWN_GOOD])
def test_known_good_requests_conform(
    api_schema: schemathesis.BaseSchema, method: str, path: str, parts: dict[str, Any]
) -> None:
    # A route that leaves the schema fails here (it used to be skipped, so dropping a route passed unnoticed).
    assert (method, path) in {(m, p) for m, p, _ in OPERATIONS}, f"{method} {path} is missing from the OpenAPI schema"
    case = api_schema[path][method].Case(**parts)
    response = case.call_and_validate(headers=AUTH, checks=CHECKS)
    assert response.status_code == 200, response.text


def test_schema_covers_every_route(fuzz_client: asgi.ASGIClient) -> None:
    paths = fuzz_client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model_id}", "/health"} <= set(paths)
    embeddings = paths["/v1/embeddings"]["post"]
    assert "requestBody" in embeddings
    for status in ("200", "400", "401", "404", "413", "429", "503"):
        assert status in embeddings["responses"], status


# ---- targeted negative data: each must be a declared 4xx in the OpenAI error shape -------------------------------

IMAGE = b64(image_bytes(make_image(32, 32, seed=3)))

NEGATIVE_BODIES: list[tuple[str, Any, int]] = [
    ("empty object", {}, 400),
    ("input null", {"input": None}, 400),
    ("input number", {"input": 12}, 400),
    ("input bool", {"input": True}, 400),
    ("empty array", {"input": []}, 400),
    ("empty string", {"input": ""}, 400),
    ("token ids", {"input": [1, 2, 3]}, 400),
    ("nested token ids", {"input": [[1, 2], [3]]}, 400),
    ("array of null", {"input": [None]}, 400),
    ("array of numbers and strings", {"input": ["a", 1.5]}, 400),
    ("unknown part type", {"input": [{"type": "audio", "audio": "x"}]}, 400),
    ("part without type", {"input": [{"text": "a", "image": IMAGE, "extra": 1}]}, 400),
    ("text part not a string", {"input": [{"type": "text", "text": 5}]}, 400),
    ("image not base64", {"input": [{"type": "image", "image": "%%%not-base64%%%"}]}, 400),
    ("image base64 of garbage", {"input": [{"type": "image", "image": b64(b"not an image at all")}]}, 400),
    ("image_url bad scheme", {"input": [{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}, 400),
    ("image_url private host", {"input": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/a.png"}}]}, 400),
    ("content a number", {"input": {"content": 5}}, 400),
    ("content empty", {"input": {"content": []}}, 400),
    ("empty fused array", {"input": [[]]}, 400),
    ("dimensions zero", {"input": "a", "dimensions": 0}, 400),
    ("dimensions negative", {"input": "a", "dimensions": -3}, 400),
    ("dimensions too large", {"input": "a", "dimensions": 10**9}, 400),
    ("dimensions string", {"input": "a", "dimensions": "eight"}, 400),
    ("dimensions float", {"input": "a", "dimensions": 4.5}, 400),
    ("encoding_format unknown", {"input": "a", "encoding_format": "int4"}, 400),
    ("normalize string", {"input": "a", "normalize": "maybe"}, 400),
    ("instruction number", {"input": "a", "instruction": 7}, 400),
    ("wrong model", {"input": "a", "model": "text-embedding-3-small"}, 404),
]


@pytest.mark.parametrize(
    ("body", "status"), [(body, status) for _, body, status in NEGATIVE_BODIES], ids=[n for n, _, _ in NEGATIVE_BODIES]
)
def test_negative_bodies(fuzz_client: asgi.ASGIClient, body: Any, status: int) -> None:
    response = fuzz_client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]


RAW_BODIES: list[tuple[str, bytes, int]] = [
    ("not json", b"{input: 'a'", 400),
    ("json array", b'["a", "b"]', 400),
    ("json string", b'"a"', 400),
    ("json null", b"null", 400),
    ("empty body", b"", 400),
    ("invalid utf-8", b'{"input": "\xff\xfe"}', 400),
    ("lone surrogate escape", b'{"input": "\\ud800"}', 400),
    ("deeply nested", b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
]


@pytest.mark.parametrize(
    ("raw", "status"), [(raw, status) for _, raw, status in RAW_BODIES], ids=[n for n, _, _ in RAW_BODIES]
)
def test_malformed_bodies(fuzz_client: asgi.ASGIClient, raw: bytes, status: int) -> None:
    response = fuzz_client.post("/v1/embeddings", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_missing_key_is_declared_401(fuzz_app: Any) -> None:
    with asgi.get_client(fuzz_app) as anonymous:
        response = anonymous.post("/v1/embeddings", json={"input": "a"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_positive_mixed_request_matches_schema(fuzz_client: asgi.ASGIClient) -> None:
    body = {
        "input": [
            "hello",
            {"type": "image", "image": IMAGE},
            [{"type": "text", "text": "a cat"}, {"type": "image", "image": IMAGE}],
        ],
        "dimensions": 8,
        "encoding_format": "base64",
    }
    response = fuzz_client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    assert all(isinstance(item["embedding"], str) for item in data)
