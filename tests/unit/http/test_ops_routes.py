"""`/health` (and HEAD /health) through loading, ready and failed states, what it shows without a key, and
`/v1/embeddings` while the model loads or after it failed.

`resolve_model_path` and `has_random_weights` themselves are in tests/unit/families/test_loader.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response

from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.loader import ModelUnavailable
from embedding_api.http.app import create_app
from embedding_api.settings import Settings
from tests.conftest import API_KEY, make_settings
from tests.fakes import GatedLoader, WarmUpFails
from tests.support.assertions import assert_one_sentence

MODEL = "Qwen3-VL-Embedding-2B"
HEALTH_FIELDS = {
    "status",
    "model",
    "model_path",
    "device",
    "cuda_available",
    "embedding_dimension",
    "max_image_width",
    "max_image_height",
    "detail",
    "random_weights",
    "note",
    "models",
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def wait_for(client: TestClient, status: str, timeout: float = 30) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health")
        if response.json()["status"] == status or time.monotonic() > deadline:
            return response
        time.sleep(0.01)


@contextmanager
def loading_app(settings: Settings, gate: GatedLoader) -> Iterator[TestClient]:
    try:
        with TestClient(create_app(settings, loader=gate), headers=AUTH) as client:  # model_path: for keyed callers
            assert gate.entered.wait(timeout=10)
            yield client
            gate.release.set()
    finally:
        gate.release.set()  # never leave the loader thread blocked


def test_health_is_503_loading_then_200_ok(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        loading = client.get("/health")
        assert loading.status_code == 503
        body = loading.json()
        assert set(body) == HEALTH_FIELDS
        assert body["status"] == "loading"
        assert body["model"] == MODEL
        assert body["model_path"] == str(tiny_model_dir)
        assert body["device"] is None
        assert body["cuda_available"] is torch.cuda.is_available()
        assert body["embedding_dimension"] is None
        assert body["max_image_width"] is None
        assert body["max_image_height"] is None
        assert body["detail"] is None

        gate.release.set()
        ready = wait_for(client, "ok")
        assert ready.status_code == 200
        body = ready.json()
        assert set(body) == HEALTH_FIELDS
        assert body["status"] == "ok"
        assert body["model"] == MODEL
        assert body["model_path"] == str(tiny_model_dir)
        assert body["device"] == str(tiny_family.device)
        assert "cpu" in body["device"]
        assert body["cuda_available"] is torch.cuda.is_available()
        assert body["embedding_dimension"] == tiny_family.dimension
        assert body["detail"] is None
        assert body["random_weights"] is True  # the test checkpoint is the tiny random one


def test_embeddings_are_503_while_loading(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        response = client.post("/v1/embeddings", json={"input": "hi"}, headers=AUTH)
        assert response.status_code == 503
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "service_unavailable"
        assert error["code"] == "model_loading"

        gate.release.set()
        assert wait_for(client, "ok").status_code == 200
        assert client.post("/v1/embeddings", json={"input": "hi"}, headers=AUTH).status_code == 200


def test_health_needs_no_key_while_loading(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        client.headers.pop("Authorization")
        assert client.get("/health").status_code == 503
        assert client.post("/v1/embeddings", json={"input": "hi"}).status_code == 401


def test_health_reports_configured_sizes(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    settings = make_settings(tiny_model_dir, embedding_dimension=8, max_image_size=512, max_image_height=300)
    gate = GatedLoader(tiny_family)
    with loading_app(settings, gate) as client:
        loading = client.get("/health").json()
        assert loading["embedding_dimension"] == 8
        assert loading["max_image_width"] == 512
        assert loading["max_image_height"] == 300
        gate.release.set()
        ready = wait_for(client, "ok").json()
        assert ready["embedding_dimension"] == 8
        assert (ready["max_image_width"], ready["max_image_height"]) == (512, 300)


def test_custom_model_name_in_health(make_client: Callable[..., TestClient]) -> None:
    client = make_client(model_name="custom")
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"] == "custom"


def failing_app(settings: Settings, loader: Callable[..., EmbeddingFamily], fatal: list[str]) -> TestClient:
    return TestClient(create_app(settings, loader=loader, on_fatal=fatal.append), headers=AUTH)


def test_model_unavailable_gives_503_error_with_detail(tiny_model_dir: Path) -> None:
    message = "Model X is not on this machine; download it first."

    def loader(*_: object) -> EmbeddingFamily:
        raise ModelUnavailable(message)

    fatal: list[str] = []
    with failing_app(make_settings(tiny_model_dir), loader, fatal) as client:
        response = wait_for(client, "error")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "error"
        assert body["detail"] == message
        assert body["device"] is None
        assert fatal == [message]


def test_unexpected_load_failure_is_reported_in_one_line(tiny_model_dir: Path) -> None:
    def loader(*_: object) -> EmbeddingFamily:
        raise RuntimeError("CUDA error: no kernel image")

    fatal: list[str] = []
    with failing_app(make_settings(tiny_model_dir), loader, fatal) as client:
        response = wait_for(client, "error")
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "CUDA error: no kernel image" in detail
        assert f"MODEL_PATH={tiny_model_dir}" in detail
        assert "\n" not in detail
        assert fatal == [detail]


def test_embeddings_after_a_failed_load_do_not_say_still_loading(tiny_model_dir: Path) -> None:
    def loader(*_: object) -> EmbeddingFamily:
        raise ModelUnavailable("no weights.")

    with failing_app(make_settings(tiny_model_dir), loader, []) as client:
        assert wait_for(client, "error").status_code == 503
        response = client.post("/v1/embeddings", json={"input": "hi"}, headers=AUTH)
        assert response.status_code == 503
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "loading" not in error["message"], "a failed load must not tell clients to keep retrying"
        assert error["code"] != "model_loading"


def test_a_failing_warm_up_is_reported_as_an_error(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    broken: Any = WarmUpFails(tiny_family)
    fatal: list[str] = []
    with failing_app(make_settings(tiny_model_dir), lambda *_: broken, fatal) as client:
        response = wait_for(client, "error", timeout=3)
        body = response.json()
        assert body["status"] == "error", "the server must not stay 'loading' forever when warm-up fails"
        assert response.status_code == 503
        assert body["detail"]
        assert len(fatal) == 1


# ---- random weights (the demo) ---------------------------------------------------------------------------------

RANDOM_NOTE = (
    "MODEL_PATH={path} holds RANDOM weights (a test checkpoint built by devtools): "
    "its vectors are meaningless, though served as 'Qwen3-VL-Embedding-2B'"
)


def test_health_says_the_weights_are_random(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily, caplog: pytest.LogCaptureFixture
) -> None:
    gate = GatedLoader(tiny_family)
    with caplog.at_level("WARNING"), loading_app(make_settings(tiny_model_dir), gate) as client:
        loading = client.get("/health").json()
        assert loading["random_weights"] is True
        assert loading["note"] == RANDOM_NOTE.format(path=tiny_model_dir)
        gate.release.set()
        ready = wait_for(client, "ok").json()
        assert ready["random_weights"] is True
        assert ready["note"] == RANDOM_NOTE.format(path=tiny_model_dir)
    assert f"!!! {RANDOM_NOTE.format(path=tiny_model_dir)} !!!" in caplog.messages


def test_health_of_real_weights_has_no_note(tmp_path: Path, tiny_family: EmbeddingFamily) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl"}')
    gate = GatedLoader(tiny_family)
    gate.release.set()
    with loading_app(make_settings(tmp_path), gate) as client:
        body = wait_for(client, "ok").json()
    assert body["random_weights"] is False
    assert body["note"] is None


# ---- what /health shows without a key ----------------------------------------------------------------------------


def test_health_without_a_key_hides_the_model_path(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    gate.release.set()
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        wait_for(client, "ok")
        keyed = client.get("/health").json()
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-key"}):
            anonymous = client.get("/health", headers=headers)
            assert anonymous.status_code == 200
            body = anonymous.json()
            assert set(body) == HEALTH_FIELDS
            assert body["model_path"] is None
            assert str(tiny_model_dir) not in anonymous.text
            assert body["note"] == RANDOM_NOTE.format(path="<hidden>")
            assert {key: value for key, value in body.items() if key not in ("model_path", "note")} == {
                key: value for key, value in keyed.items() if key not in ("model_path", "note")
            }
    assert keyed["model_path"] == str(tiny_model_dir)


def test_a_load_failure_without_a_key_hides_the_model_path(tiny_model_dir: Path) -> None:
    def loader(*_: object) -> EmbeddingFamily:
        raise RuntimeError("CUDA error: no kernel image")

    with failing_app(make_settings(tiny_model_dir), loader, []) as client:
        wait_for(client, "error")
        body = client.get("/health", headers={"Authorization": ""}).json()
    assert body["model_path"] is None
    assert "CUDA error: no kernel image" in body["detail"] and str(tiny_model_dir) not in body["detail"]


def test_health_with_auth_off_shows_the_model_path(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    gate.release.set()
    with loading_app(make_settings(tiny_model_dir, api_key=""), gate) as client:
        body = wait_for(client, "ok").json()
    assert body["model_path"] == str(tiny_model_dir)  # everyone may use every route then


# ---- HEAD /health ----------------------------------------------------------------------------------------------


def test_head_health_answers_like_get_without_a_body(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = GatedLoader(tiny_family)
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        get, head = client.get("/health"), client.head("/health")
        assert (get.status_code, head.status_code) == (503, 503)
        assert head.content == b""
        assert head.headers["content-type"] == "application/json"
        assert head.headers["content-length"] == get.headers["content-length"]
        gate.release.set()
        wait_for(client, "ok")
        get, head = client.get("/health"), client.head("/health")
        assert (get.status_code, head.status_code) == (200, 200)
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]


def test_head_health_needs_no_key(client: TestClient) -> None:
    client.headers.pop("Authorization")
    assert client.head("/health").status_code == 200


def test_an_embedding_dimension_over_the_models_size_fails_the_start(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    fatal: list[str] = []
    settings = make_settings(tiny_model_dir, embedding_dimension=2048)
    with failing_app(settings, lambda *_: tiny_family, fatal) as client:
        response = wait_for(client, "error")
        assert response.status_code == 503
    assert fatal == [
        f"EMBEDDING_DIMENSION=2048 is more than the 64 dimensions of MODEL_PATH={tiny_model_dir}; "
        "set at most 64 or leave it empty."
    ]
    assert_one_sentence(fatal[0])
