"""The official OpenAI SDK as a real client against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.conftest import API_KEY, LiveServer, MediaServer, image_bytes, make_image


@pytest.fixture
def sdk(live_server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY, max_retries=0)


TEXTS = ["a photo of a cat", "the quarterly report", "你好，世界 🌍"]


def test_default_base64_equals_float(sdk: OpenAI) -> None:
    default = sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input=TEXTS)
    floats = sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input=TEXTS, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert a.shape == (3, 64)
    np.testing.assert_array_equal(a, b)  # float JSON round-trips float32 exactly
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0


def test_dimensions_gives_unit_vectors_of_that_size(sdk: OpenAI) -> None:
    full = sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input=TEXTS, encoding_format="float")
    cut = sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input=TEXTS, dimensions=32)
    vectors = np.array([d.embedding for d in cut.data], dtype=np.float32)
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    head = np.array([d.embedding[:32] for d in full.data], dtype=np.float32)
    expected = head / np.linalg.norm(head, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_single_string_and_mixed_inputs_through_extra_body(sdk: OpenAI, media_server: MediaServer) -> None:
    url = media_server.add("/cat.png", image_bytes(make_image(40, 40, seed=9)))
    one = sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input="hello")
    assert len(one.data) == 1
    mixed = sdk.embeddings.create(
        model="Qwen3-VL-Embedding-2B",
        input=[],
        extra_body={"input": ["hello", {"type": "image_url", "image_url": {"url": url}}], "instruction": "Find it"},
    )
    assert [d.index for d in mixed.data] == [0, 1]
    assert media_server.hits["/cat.png"] == 1


def test_sdk_raises_typed_errors(sdk: OpenAI, live_server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert "Qwen3-VL-Embedding-2B" in str(missing.value)
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="Qwen3-VL-Embedding-2B", input="x", dimensions=10_000)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="Qwen3-VL-Embedding-2B", input="x"
        )
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["Qwen3-VL-Embedding-2B"]
