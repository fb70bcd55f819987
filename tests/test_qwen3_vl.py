"""The adapter against the independent recipe oracle, on checkpoints of different shapes, vocabularies and layouts."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedding_api.app import create_app
from embedding_api.families.base import EmbeddingFamily
from embedding_api.items import Item, VideoClip
from embedding_api.loader import load_family
from embedding_api.tiny_checkpoint import TinySpec, build_tiny_checkpoint
from tests.conftest import API_KEY, MediaServer, b64, data_uri, image_bytes, make_image, make_settings, wait_ready
from tests.reference_recipe import RefItem, reference_embed

ATOL = 1e-5
OTHER_SPEC = TinySpec(
    hidden_size=96,
    num_layers=3,
    num_heads=6,
    num_kv_heads=3,
    head_dim=16,
    intermediate_size=160,
    vision_depth=3,
    vision_hidden_size=48,
    vision_heads=3,
    vision_intermediate_size=96,
    deepstack_indexes=(0, 1),
    extra_vocab_words=300,
    layout="released",
    seed=7,
)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint unlike the default test one: other sizes, other vocabulary, the released layout."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("other-model"), OTHER_SPEC)


@pytest.fixture(scope="module")
def other_client(other_model_dir: Path) -> Iterator[TestClient]:
    """Served through the real loader from MODEL_PATH, like a user's checkpoint."""
    with TestClient(create_app(make_settings(other_model_dir))) as client:
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


def vectors_of(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_every_input_form_equals_the_recipe(
    other_client: TestClient, other_model_dir: Path, media_server: MediaServer
) -> None:
    cat, dog, wide = make_image(64, 48, seed=1), make_image(80, 80, seed=2), make_image(300, 90, seed=3)
    frames = [make_image(56, 40, seed=10 + i) for i in range(5)]
    url = media_server.add("/cat.png", image_bytes(cat))
    jpeg = image_bytes(dog, "JPEG")
    import io

    from PIL import Image

    dog_decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    request_input: list[Any] = [
        "a plain string",
        {"type": "text", "data": "seed text form"},
        {"type": "text", "text": "chat text form", "instruction": "Retrieve images relevant to the query"},
        {"type": "image", "data": url},
        {"type": "image", "data": data_uri(jpeg, "image/jpeg")},
        {"type": "image", "data": b64(image_bytes(wide))},
        {"type": "image_url", "image_url": {"url": url}},
        ["a cat on a mat", {"type": "image", "data": url}],
        {
            "content": [{"type": "text", "text": "caption"}, {"type": "image_url", "image_url": url}],
            "instruction": "Find it!",
        },
        {"type": "video", "data": [data_uri(image_bytes(f)) for f in frames]},
        [{"type": "video", "data": [b64(image_bytes(f)) for f in frames[:3]]}, "a short clip"],
    ]
    response = other_client.post("/v1/embeddings", json={"model": "Qwen3-VL-Embedding-2B", "input": request_input})
    served = vectors_of(response)
    expected = reference_embed(
        other_model_dir,
        [
            RefItem(texts=["a plain string"]),
            RefItem(texts=["seed text form"]),
            RefItem(texts=["chat text form"], instruction="Retrieve images relevant to the query"),
            RefItem(images=[cat]),
            RefItem(images=[dog_decoded]),
            RefItem(images=[wide]),
            RefItem(images=[cat]),
            RefItem(texts=["a cat on a mat"], images=[cat]),
            RefItem(texts=["caption"], images=[cat], instruction="Find it!"),
            RefItem(videos=[frames]),
            RefItem(texts=["a short clip"], videos=[frames[:3]]),
        ],
    )
    assert served.shape == (11, OTHER_SPEC.hidden_size)
    np.testing.assert_allclose(served, expected, atol=ATOL)
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 11 * 10


def test_request_instruction_dimensions_and_base64(other_client: TestClient, other_model_dir: Path) -> None:
    texts = ["where is the station", "train timetable"]
    body = {"input": texts, "instruction": "Retrieve relevant passages", "dimensions": 32, "encoding_format": "base64"}
    response = other_client.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    served = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]])
    expected = reference_embed(
        other_model_dir, [RefItem(texts=[t], instruction="Retrieve relevant passages") for t in texts], dimensions=32
    )
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_unnormalized_output_is_the_raw_pooled_state(other_client: TestClient, other_model_dir: Path) -> None:
    served = vectors_of(other_client.post("/v1/embeddings", json={"input": "raw", "normalize": False}))
    expected = reference_embed(other_model_dir, [RefItem(texts=["raw"])], normalize=False)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert abs(float(np.linalg.norm(served[0])) - 1.0) > 1e-3


def test_dimension_is_read_from_the_checkpoint(other_client: TestClient) -> None:
    health = other_client.get("/health").json()
    assert health["embedding_dimension"] == OTHER_SPEC.hidden_size
    response = other_client.post("/v1/embeddings", json={"input": "x", "dimensions": OTHER_SPEC.hidden_size + 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "dimensions"


def test_batched_equals_one_by_one(other_client: TestClient) -> None:
    inputs: list[Any] = [f"sentence number {i} " + "padding words " * (i % 5) for i in range(12)]
    inputs.append({"type": "image", "data": b64(image_bytes(make_image(50, 70, seed=4)))})
    together = vectors_of(other_client.post("/v1/embeddings", json={"input": inputs}))
    alone = np.concatenate([vectors_of(other_client.post("/v1/embeddings", json={"input": [x]})) for x in inputs])
    np.testing.assert_allclose(together, alone, atol=ATOL)


def test_default_checkpoint_matches_recipe_through_the_adapter(
    tiny_family: EmbeddingFamily, tiny_model_dir: Path
) -> None:
    image = make_image(33, 100, seed=5)
    frames = [make_image(40, 40, seed=20 + i) for i in range(4)]
    items = [
        Item(texts=["hello", "world"]),
        Item(images=[image, make_image(64, 64, seed=6)]),
        Item(videos=[VideoClip(frames=frames)], texts=["clip"], instruction="Describe:"),
        Item(),
    ]
    prepared = [tiny_family.prepare(item) for item in items]
    pooled = tiny_family.run(tiny_family.collate(prepared))
    served = tiny_family.finish(pooled, None, True)
    expected = reference_embed(
        tiny_model_dir,
        [
            RefItem(texts=["hello", "world"]),
            RefItem(images=[image, make_image(64, 64, seed=6)]),
            RefItem(texts=["clip"], videos=[frames], instruction="Describe:"),
            RefItem(),
        ],
    )
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_long_text_is_shortened_so_the_template_still_fits(tiny_model_dir: Path) -> None:
    family = load_family(make_settings(tiny_model_dir, max_length=64))
    prepared = family.prepare(Item(texts=["many words in a row " * 200]))
    assert prepared.payload.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    batch = family.collate([prepared])
    assert batch.token_counts[0] <= 64
    assert batch.token_counts[0] >= 56  # cut close to the limit, not far below it


def test_special_token_ids_come_from_the_checkpoint(tiny_family: EmbeddingFamily, other_model_dir: Path) -> None:
    other = load_family(make_settings(other_model_dir))
    assert other.dimension == OTHER_SPEC.hidden_size
    ids = [family.processor.image_token_id for family in (tiny_family, other)]  # type: ignore[attr-defined]
    assert ids[0] != ids[1]
