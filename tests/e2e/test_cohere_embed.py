"""`POST /v2/embed` on a live server, driven by the real `cohere` SDK (ClientV2): Cohere's request and answer shapes,
vectors equal to `/v1/embeddings` and to the oracles (sentence-transformers' `quantize_embeddings` for compact
forms, the Qwen3-Embedding model card's `prompt_name="query"` for `input_type`), and errors in our shape."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings

from tests.conftest import API_KEY, data_uri, image_bytes, make_image
from tests.support.families import sentence_transformers_vectors
from tests.support.live import Server

pytestmark = pytest.mark.slow
TEXTS = ["a photo of a cat", "the quarterly report was late again", "Кошка спит на диване"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
ALL_TYPES = ["float", "base64", "int8", "uint8", "binary", "ubinary"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, family_dirs: dict[str, Path]) -> Iterator[Server]:
    models = f"vl={tiny_model_dir},qe={family_dirs['qwen3_embedding']},sg={family_dirs['siglip']}"
    with Server(models=models, max_length=128) as running:
        yield running


@pytest.fixture(scope="module")
def co(server: Server) -> cohere.ClientV2:
    return cohere.ClientV2(api_key=API_KEY, base_url=server.url, timeout=60)


def openai_floats(server: Server, model: str, input: Any, **extra: Any) -> np.ndarray:
    answer = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": model, "input": input, **extra}, headers=HEADERS, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return np.array([row["embedding"] for row in answer.json()["data"]], dtype=np.float32)


def ranges(server: Server, model: str, dimensions: int | None) -> np.ndarray:
    service = server.app.state.runtime.served(model).service
    result: np.ndarray = service.calibration.ranges_for(dimensions, True)
    return result


def oracle(vectors: np.ndarray, precision: Any, calibration: np.ndarray) -> np.ndarray:
    expected = quantize_embeddings(vectors, precision, ranges=calibration)
    assert isinstance(expected, np.ndarray)
    return expected


@pytest.mark.parametrize("dimensions", [None, 24])
def test_every_embedding_type_at_once_equals_the_oracles(
    co: cohere.ClientV2, server: Server, dimensions: int | None
) -> None:
    response = co.embed(
        model="vl",
        texts=TEXTS,
        input_type="search_document",
        embedding_types=ALL_TYPES,
        output_dimension=dimensions,  # None: sent as null, the model's full size
    )
    floats = openai_floats(server, "vl", TEXTS, **({"dimensions": dimensions} if dimensions else {}))
    embeddings = response.embeddings
    np.testing.assert_array_equal(np.array(embeddings.float_, dtype=np.float32), floats)
    assert embeddings.base64 is not None
    decoded = np.stack([np.frombuffer(base64.b64decode(text), dtype="<f4") for text in embeddings.base64])
    np.testing.assert_array_equal(decoded, floats)
    calibration = ranges(server, "vl", dimensions)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        got = np.array(getattr(embeddings, precision))
        np.testing.assert_array_equal(got, oracle(floats, precision, calibration), err_msg=precision)
    assert response.texts == TEXTS
    assert response.id and response.meta is not None and response.meta.billed_units is not None
    assert response.meta.billed_units.input_tokens and response.meta.billed_units.input_tokens > 0


def test_float_is_the_default_type(co: cohere.ClientV2, server: Server) -> None:
    response = co.embed(model="vl", texts=TEXTS[:1], input_type="classification")
    assert response.embeddings.float_ is not None and response.embeddings.int8 is None
    np.testing.assert_array_equal(
        np.array(response.embeddings.float_, dtype=np.float32), openai_floats(server, "vl", TEXTS[:1])
    )


def test_cohere_priority_is_accepted(co: cohere.ClientV2, server: Server) -> None:
    bulk = co.embed(model="vl", texts=TEXTS[:1], input_type="search_document", priority=3)  # above 0: bulk
    expected = openai_floats(server, "vl", TEXTS[:1])
    np.testing.assert_array_equal(np.array(bulk.embeddings.float_, dtype=np.float32), expected)


def test_input_type_on_qwen3_embedding_is_the_model_cards_query_prompt(
    co: cohere.ClientV2, family_dirs: dict[str, Path]
) -> None:
    path = family_dirs["qwen3_embedding"]
    queries = co.embed(model="qe", texts=TEXTS, input_type="search_query", embedding_types=["float"])
    documents = co.embed(model="qe", texts=TEXTS, input_type="search_document", embedding_types=["float"])
    query_vectors = np.array(queries.embeddings.float_, dtype=np.float32)
    document_vectors = np.array(documents.embeddings.float_, dtype=np.float32)
    np.testing.assert_allclose(query_vectors, sentence_transformers_vectors(path, TEXTS, query=True), atol=1e-5)
    np.testing.assert_allclose(document_vectors, sentence_transformers_vectors(path, TEXTS, query=False), atol=1e-5)
    assert (np.sum(query_vectors * document_vectors, axis=1) < 0.9999).all()


def test_input_type_is_a_no_op_for_siglip(co: cohere.ClientV2) -> None:
    queries = co.embed(model="sg", texts=TEXTS, input_type="search_query", embedding_types=["float"])
    documents = co.embed(model="sg", texts=TEXTS, input_type="search_document", embedding_types=["float"])
    np.testing.assert_array_equal(queries.embeddings.float_, documents.embeddings.float_)


def test_images_and_mixed_inputs(co: cohere.ClientV2, server: Server) -> None:
    uri = data_uri(image_bytes(make_image(48, 40, seed=5)))
    images = co.embed(model="vl", images=[uri], input_type="image", embedding_types=["float"])
    expected = openai_floats(server, "vl", [{"type": "image_url", "image_url": {"url": uri}}])
    np.testing.assert_allclose(np.array(images.embeddings.float_, dtype=np.float32), expected, atol=1e-6)
    assert images.meta is not None and images.meta.billed_units is not None
    assert images.meta.billed_units.images == 1
    content = [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": uri}}]
    sdk_input = cohere.EmbedInput(
        content=[
            cohere.TextEmbedContent(text="a cat"),
            cohere.ImageUrlEmbedContent(image_url=cohere.EmbedImageUrl(url=uri)),
        ]
    )
    mixed = co.embed(model="vl", inputs=[sdk_input], input_type="search_query", embedding_types=["float"])
    fused = openai_floats(server, "vl", [{"content": content}], input_type="query")
    np.testing.assert_allclose(np.array(mixed.embeddings.float_, dtype=np.float32), fused, atol=1e-6)


def test_truncate_end_shortens_and_none_refuses(co: cohere.ClientV2) -> None:
    long_text = "word " * 400  # far above MAX_LENGTH=128 tokens
    ended = co.embed(model="qe", texts=[long_text], input_type="search_document", truncate="END")
    assert ended.embeddings.float_ is not None and len(ended.embeddings.float_[0]) > 0
    with pytest.raises(cohere.BadRequestError) as refused:
        co.embed(model="qe", texts=["short", long_text], input_type="search_document", truncate="NONE")
    error = refused.value.body["error"]
    assert error["param"] == "texts[1]" and "MAX_LENGTH=128" in error["message"]
    with pytest.raises(cohere.BadRequestError) as start:
        co.embed(model="qe", texts=[long_text], input_type="search_document", truncate="START")
    assert start.value.body["error"]["param"] == "truncate"


def test_an_unknown_model_is_a_404_naming_the_served_ones(co: cohere.ClientV2) -> None:
    with pytest.raises(cohere.NotFoundError) as missing:
        co.embed(model="embed-v4.0", texts=["x"], input_type="search_document")
    assert "'vl'" in missing.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"texts": ["x"], "images": ["data:,"]}, "images", "exactly one"),
        ({}, "texts", "required"),
        ({"texts": []}, "texts", ""),
        ({"texts": ["x"], "output_dimension": 10_000}, "output_dimension", "between 1 and 64"),
        ({"model": "sg", "texts": ["x"], "output_dimension": 8}, "output_dimension", "Matryoshka"),
        ({"texts": ["x"], "embedding_types": ["int4"]}, "embedding_types[0]", ""),
        ({"texts": ["x"], "input_type": "search_everything"}, "input_type", "search_query"),
        ({"texts": ["x"], "truncate": "MIDDLE"}, "truncate", ""),
        ({"texts": ["x"], "max_tokens": 10}, "max_tokens", "MAX_LENGTH"),
        ({"texts": ["x"], "priority": -1}, "priority", ""),
        ({"texts": ["x", 3]}, "texts[1]", "string"),
        ({"inputs": [{"content": [{"type": "audio", "audio": "x"}]}]}, "inputs[0].content[0]", ""),
        ({"inputs": [{"text": "x"}]}, "inputs[0].content", "required"),
        ({"images": ["data:image/png;base64,!!"]}, "images[0]", ""),
    ],
)
def test_errors_are_400_in_our_shape(server: Server, body: dict[str, Any], param: str, fragment: str) -> None:
    answer = httpx.post(f"{server.url}/v2/embed", json={"model": "vl", **body}, headers=HEADERS, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_a_key_is_needed(server: Server) -> None:
    assert httpx.post(f"{server.url}/v2/embed", json={"texts": ["x"]}, timeout=10).status_code == 401
