"""Several models in one server (MODELS), driven through the OpenAI SDK and plain HTTP: each model's vectors
equal its own oracle, requests are routed by `model`, and inputs a model cannot take get a 400 naming who can."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import API_KEY, b64, image_bytes, make_image
from tests.support.families import (
    QWEN3_TASK,
    hidden_state_vectors,
    sentence_transformers_vectors,
    siglip_vectors,
)
from tests.support.live import Server

pytestmark = pytest.mark.slow
TEXTS = ["a photo of a cat", "the quarterly report was late again", "x"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, family_dirs: dict[str, Path]) -> Iterator[Server]:
    models = ",".join(
        [
            f"vl={tiny_model_dir}",
            f"qwen3-text={family_dirs['qwen3_embedding']}",
            f"siglip={family_dirs['siglip']}",
            f"siglip2={family_dirs['siglip2']}",
            f"lm={family_dirs['causal_lm']}",
        ]
    )
    with Server(models=models) as running:
        yield running


@pytest.fixture
def sdk(server: Server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _post(server: Server, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )


def _vectors(response: object) -> np.ndarray:
    return np.array([row.embedding for row in response.data], dtype=np.float32)  # type: ignore[attr-defined]


def test_text_models_equal_their_oracles_through_the_sdk(sdk: OpenAI, family_dirs: dict[str, Path]) -> None:
    documents = _vectors(sdk.embeddings.create(model="qwen3-text", input=TEXTS))
    np.testing.assert_allclose(
        documents, sentence_transformers_vectors(family_dirs["qwen3_embedding"], TEXTS, query=False), atol=1e-5
    )
    queries = _vectors(sdk.embeddings.create(model="qwen3-text", input=TEXTS, extra_body={"instruction": QWEN3_TASK}))
    np.testing.assert_allclose(
        queries, sentence_transformers_vectors(family_dirs["qwen3_embedding"], TEXTS, query=True), atol=1e-5
    )
    hidden = _vectors(sdk.embeddings.create(model="lm", input=TEXTS))
    np.testing.assert_allclose(
        hidden, hidden_state_vectors(family_dirs["causal_lm"], TEXTS, layer=-2, pooling="mean"), atol=1e-5
    )


def test_siglip_texts_through_the_sdk(sdk: OpenAI, family_dirs: dict[str, Path]) -> None:
    _, expected_texts = siglip_vectors(family_dirs["siglip"], [make_image()], TEXTS)
    ours = _vectors(sdk.embeddings.create(model="siglip", input=TEXTS))
    np.testing.assert_allclose(ours, expected_texts, atol=1e-5)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_siglip_models_equal_the_model_card_through_http(
    server: Server, family_dirs: dict[str, Path], name: str
) -> None:
    images = [make_image(60, 40, seed=1), make_image(30, 90, seed=2)]
    expected_images, expected_texts = siglip_vectors(family_dirs[name], images, TEXTS)
    inputs = [{"type": "image", "data": b64(image_bytes(image))} for image in images] + TEXTS
    response = _post(server, {"model": name, "input": inputs})
    assert response.status_code == 200, response.text
    ours = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(ours, np.concatenate([expected_images, expected_texts]), atol=1e-5)


def test_no_model_named_is_the_first_and_an_unknown_one_is_404(server: Server, sdk: OpenAI) -> None:
    first = _post(server, {"input": "hello"}).json()
    assert first["model"] == "vl"
    named = _vectors(sdk.embeddings.create(model="vl", input="hello"))
    np.testing.assert_array_equal(np.array([first["data"][0]["embedding"]], dtype=np.float32), named)
    missing = _post(server, {"model": "text-embedding-3-small", "input": "x"})
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    for name in ("vl", "qwen3-text", "siglip", "siglip2", "lm"):
        assert repr(name) in message


@pytest.mark.parametrize(
    ("body", "param", "able"),
    [
        ({"model": "lm", "input": [{"type": "image", "data": "x"}]}, "input[0]", ["vl", "siglip", "siglip2"]),
        ({"model": "siglip", "input": [["a caption", {"type": "image", "data": "x"}]]}, "input[0]", ["vl"]),
        ({"model": "siglip2", "input": [{"type": "video", "data": ["x", "y"]}]}, "input[0]", ["vl"]),
        ({"model": "lm", "input": "x", "dimensions": 8}, "dimensions", ["vl", "qwen3-text"]),
        ({"model": "siglip", "input": "x", "instruction": "find cats"}, "instruction", ["vl", "qwen3-text"]),
    ],
)
def test_inputs_a_model_cannot_take_name_the_models_that_can(
    server: Server, body: dict[str, object], param: str, able: list[str]
) -> None:
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == "unsupported_by_model"
    assert error["message"].endswith("served models that can: " + ", ".join(able))


def test_models_and_health_list_every_model(server: Server) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    cards = {card["id"]: card for card in httpx.get(f"{server.url}/v1/models", headers=headers).json()["data"]}
    assert {name: (card["family"], card["dimension"], card["modalities"]) for name, card in cards.items()} == {
        "vl": ("qwen3_vl", 64, ["image", "text", "video"]),
        "qwen3-text": ("qwen3_embedding", 64, ["text"]),
        "siglip": ("siglip", 32, ["image", "text"]),
        "siglip2": ("siglip2", 32, ["image", "text"]),
        "lm": ("hidden_state", 64, ["text"]),
    }
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    assert [(model["name"], model["status"]) for model in health["models"]] == [
        ("vl", "ok"),
        ("qwen3-text", "ok"),
        ("siglip", "ok"),
        ("siglip2", "ok"),
        ("lm", "ok"),
    ]


def test_seed_routes_use_the_first_text_and_image_models(server: Server) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    text = httpx.post(f"{server.url}/embed/text", json={"text": "hi"}, headers=headers).json()
    assert (text["model"], text["dimension"]) == ("vl", 64)
    image = httpx.post(
        f"{server.url}/embed/image/base64", json={"image_base64": b64(image_bytes(make_image()))}, headers=headers
    ).json()
    assert (image["model"], image["dimension"]) == ("vl", 64)


def test_seed_routes_follow_text_model_and_image_model(tiny_model_dir: Path, family_dirs: dict[str, Path]) -> None:
    models = f"lm={family_dirs['causal_lm']},siglip={family_dirs['siglip']}"
    with Server(models=models, text_model="lm", image_model="siglip") as running:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        text = httpx.post(f"{running.url}/embed/texts", json={"texts": ["a", "b"]}, headers=headers).json()
        assert (text["model"], text["dimension"]) == ("lm", 64)
        image_body = {"image_base64": b64(image_bytes(make_image()))}
        image = httpx.post(f"{running.url}/embed/image/base64", json=image_body, headers=headers).json()
        assert (image["model"], image["dimension"]) == ("siglip", 32)


def test_a_busy_model_does_not_hold_up_another(server: Server) -> None:
    """Each model has its own queue and batcher: a short request to one model is answered while a long request to
    another is still running."""
    import concurrent.futures

    long_input = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 40 for i in range(256)]
    finished: dict[str, float] = {}

    def call(model: str, payload: object) -> None:
        response = _post(server, {"model": model, "input": payload})
        assert response.status_code == 200, response.text
        finished[model] = time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(call, "vl", long_input)
        time.sleep(0.3)  # the long request is queued and running
        started = time.perf_counter()
        quick = pool.submit(call, "lm", "hello")
        quick.result(timeout=60)
        busy.result(timeout=120)
    assert finished["lm"] < finished["vl"]
    assert finished["lm"] - started < (finished["vl"] - started) / 2
