"""`POST /v1/embeddings` with compact vectors (`encoding_format` int8, uint8, binary, ubinary; `embedding_types`) and
`input_type`, over the real tiny Qwen3-VL-Embedding checkpoint. The oracle for every compact form is
sentence-transformers' `quantize_embeddings` on the server's own float vectors; the built-in calibration ranges are
checked against the float vectors of the built-in texts fetched through the API."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sentence_transformers.util import quantize_embeddings

from embedding_api.service.options import FAMILY_PRESETS
from embedding_api.service.quantize import CALIBRATION_TEXTS

TEXTS = ["a photo of a cat", "the quarterly report", "你好，世界 🌍", "Кошка спит"]
COMPACT = ("int8", "uint8", "binary", "ubinary")
QUERY_INSTRUCTION = FAMILY_PRESETS["qwen3_vl"]["query"]


def embed(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json={"input": TEXTS, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def floats(client: TestClient, **body: Any) -> np.ndarray:
    return np.array([row["embedding"] for row in embed(client, **body)["data"]], dtype=np.float32)


def ranges_of(client: TestClient, dimensions: int | None) -> np.ndarray:
    service = client.app.state.runtime.service  # type: ignore[attr-defined]
    ranges: np.ndarray = service.calibration.ranges_for(dimensions, True)
    return ranges


@pytest.mark.parametrize("precision", COMPACT)
@pytest.mark.parametrize("dimensions", [None, 32, 20])  # 20: not a multiple of 8
def test_each_compact_form_equals_sentence_transformers(
    client: TestClient, precision: Any, dimensions: int | None
) -> None:
    extra = {"dimensions": dimensions} if dimensions else {}
    vectors = floats(client, **extra)
    rows = [row["embedding"] for row in embed(client, encoding_format=precision, **extra)["data"]]
    assert all(isinstance(value, int) for row in rows for value in row)
    expected = quantize_embeddings(vectors, precision, ranges=ranges_of(client, dimensions))
    assert isinstance(expected, np.ndarray)
    np.testing.assert_array_equal(np.array(rows), expected.astype(np.int64))
    width = (dimensions or 64) if precision.endswith("int8") else -(-(dimensions or 64) // 8)
    assert len(rows[0]) == width


def test_builtin_ranges_come_from_the_builtin_texts_as_documents_and_queries(client: TestClient) -> None:
    texts = list(CALIBRATION_TEXTS)
    documents = np.array(
        [row["embedding"] for row in client.post("/v1/embeddings", json={"input": texts}).json()["data"]]
    )
    queries = np.array(
        [
            row["embedding"]
            for row in client.post("/v1/embeddings", json={"input": texts, "input_type": "query"}).json()["data"]
        ]
    )
    calibration = np.concatenate([documents, queries]).astype(np.float32)
    expected = np.vstack([calibration.min(axis=0), calibration.max(axis=0)])
    np.testing.assert_allclose(ranges_of(client, None), expected, atol=1e-5)  # batching noise only
    card = client.get("/v1/models/Qwen3-VL-Embedding-2B").json()
    assert card["quantization"] == {"source": "builtin", "samples": 2 * len(texts)}
    assert card["input_types"] == {"query": QUERY_INSTRUCTION}


def test_embedding_types_gives_every_form_at_once(client: TestClient) -> None:
    vectors = floats(client, dimensions=24)
    answer = embed(client, dimensions=24, embedding_types=["float", "base64", "int8", "ubinary"])
    for index, row in enumerate(answer["data"]):
        assert "embedding" not in row and row["index"] == index
        forms = row["embeddings"]
        assert set(forms) == {"float", "base64", "int8", "ubinary"}
        np.testing.assert_array_equal(np.array(forms["float"], dtype=np.float32), vectors[index])
        decoded = np.frombuffer(base64.b64decode(forms["base64"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, vectors[index])
    int8 = quantize_embeddings(vectors, "int8", ranges=ranges_of(client, 24))
    ubinary = quantize_embeddings(vectors, "ubinary")
    assert isinstance(int8, np.ndarray) and isinstance(ubinary, np.ndarray)
    np.testing.assert_array_equal([row["embeddings"]["int8"] for row in answer["data"]], int8)
    np.testing.assert_array_equal([row["embeddings"]["ubinary"] for row in answer["data"]], ubinary)


def test_a_calibration_file_gives_the_ranges(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 64)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    path = tmp_path / "calibration.npy"
    np.save(path, embeddings)
    client = make_client(quantization_calibration=str(path))
    assert client.get("/v1/models").json()["data"][0]["quantization"] == {
        "source": "file",
        "samples": 300,
        "path": "calibration.npy",
    }
    for dimensions in (None, 16):
        extra = {"dimensions": dimensions} if dimensions else {}
        vectors = floats(client, **extra)
        cut = embeddings[:, : dimensions or 64]
        cut = cut / np.linalg.norm(cut, axis=1, keepdims=True)  # finished like the request's vectors
        for precision in ("int8", "uint8"):
            rows = [row["embedding"] for row in embed(client, encoding_format=precision, **extra)["data"]]
            expected = quantize_embeddings(vectors, precision, calibration_embeddings=cut)
            np.testing.assert_array_equal(rows, expected)


def test_a_bad_calibration_file_fails_the_model_in_one_line(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    from embedding_api.http.app import create_app
    from tests.conftest import make_settings

    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros((10, 7), np.float32))
    fatal: list[str] = []
    settings = make_settings("unused", quantization_calibration=str(path))
    family = make_client().app.state.runtime.family  # type: ignore[attr-defined]
    with TestClient(create_app(settings, loader=lambda *_: family, on_fatal=fatal.append)) as client:
        for _ in range(200):
            if fatal:
                break
            client.get("/health")
    assert fatal and "wrong.npy" in fatal[0] and "(n, 64)" in fatal[0]


def test_without_calibration_int8_is_a_400_and_binary_still_works(make_client: Callable[..., TestClient]) -> None:
    client = make_client(builtin_calibration=False)
    for body in ({"encoding_format": "uint8"}, {"embedding_types": ["float", "int8"]}):
        response = client.post("/v1/embeddings", json={"input": "x", **body})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "calibration_unavailable"
        assert error["param"] == ("encoding_format" if "encoding_format" in body else "embedding_types")
    assert client.get("/v1/models").json()["data"][0]["quantization"] is None
    assert len(embed(client, encoding_format="binary")["data"][0]["embedding"]) == 8


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"encoding_format": "int4"}, "encoding_format"),
        ({"embedding_types": ["float", "fp16"]}, "embedding_types[1]"),
        ({"embedding_types": []}, "embedding_types"),
        ({"embedding_types": "int8"}, "embedding_types"),
        ({"input_type": "search_everything"}, "input_type"),
        ({"input_type": 3}, "input_type"),
    ],
)
def test_bad_values_are_400_in_our_shape(client: TestClient, body: dict[str, Any], param: str) -> None:
    response = client.post("/v1/embeddings", json={"input": "x", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


# ---- input_type ---------------------------------------------------------------------------------------------------


def test_input_type_selects_the_instruction_preset(client: TestClient) -> None:
    plain = floats(client)
    document = floats(client, input_type="document")
    search_document = floats(client, input_type="search_document")
    query = floats(client, input_type="query")
    search_query = floats(client, input_type="search_query")
    np.testing.assert_array_equal(document, plain)  # documents: the model's default instruction
    np.testing.assert_array_equal(search_document, plain)
    np.testing.assert_array_equal(search_query, query)
    np.testing.assert_allclose(query, floats(client, instruction=QUERY_INSTRUCTION), atol=1e-6)
    cosines = np.sum(query * plain, axis=1)
    assert (cosines < 0.9999).all()  # the same text as a query is another vector


def test_an_explicit_instruction_wins_over_input_type(client: TestClient) -> None:
    instructed = floats(client, instruction="Find the recipe.")
    np.testing.assert_allclose(
        floats(client, instruction="Find the recipe.", input_type="query"), instructed, atol=1e-6
    )
    # an input's own instruction wins too
    answer = client.post(
        "/v1/embeddings",
        json={"input": [{"content": [{"type": "text", "text": TEXTS[0]}], "instruction": "Find the recipe."}]},
    ).json()
    own = client.post(
        "/v1/embeddings",
        json={
            "input": [{"content": [{"type": "text", "text": TEXTS[0]}], "instruction": "Find the recipe."}],
            "input_type": "query",
        },
    ).json()
    np.testing.assert_allclose(own["data"][0]["embedding"], answer["data"][0]["embedding"], atol=1e-6)
    np.testing.assert_allclose(answer["data"][0]["embedding"], instructed[0], atol=1e-5)


def test_classification_and_clustering_default_to_the_models_instruction(client: TestClient) -> None:
    plain = floats(client)
    for kind in ("classification", "clustering"):
        np.testing.assert_array_equal(floats(client, input_type=kind), plain)


def test_models_config_gives_a_model_its_calibration_and_presets(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    path = tmp_path / "ranges.npy"
    np.save(path, np.vstack([np.full(64, -0.5), np.full(64, 0.5)]).astype(np.float32))
    config = tmp_path / "models.toml"
    config.write_text(
        f"""
[[models]]
name = "vl"
path = "unused"
calibration = "{path}"

[models.input_types]
query = "Find it."
clustering = "Group it."
""",
        encoding="utf-8",
    )
    client = make_client(models_config=str(config))
    card = client.get("/v1/models/vl").json()
    assert card["quantization"] == {"source": "file", "samples": 0, "path": "ranges.npy"}
    assert card["input_types"] == {"query": "Find it.", "clustering": "Group it."}
    np.testing.assert_allclose(floats(client, input_type="query"), floats(client, instruction="Find it."), atol=1e-6)
    np.testing.assert_allclose(
        floats(client, input_type="clustering"), floats(client, instruction="Group it."), atol=1e-6
    )
    vectors = floats(client)
    rows = [row["embedding"] for row in embed(client, encoding_format="uint8")["data"]]
    ranges = np.vstack([np.full(64, -0.5), np.full(64, 0.5)]).astype(np.float32)
    np.testing.assert_array_equal(rows, quantize_embeddings(vectors, "uint8", ranges=ranges))
