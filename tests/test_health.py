"""`/health` through loading, ready and failed states, and `resolve_model_path`'s one-sentence refusals."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response

from embedding_api.families.base import Batch, EmbeddingFamily, PreparedItem
from embedding_api.families.loader import ModelUnavailable, has_random_weights, resolve_model_path
from embedding_api.http.app import create_app
from embedding_api.items import Item
from embedding_api.settings import Settings
from tests.conftest import API_KEY, make_settings

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
}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def wait_for(client: TestClient, status: str, timeout: float = 30) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/health")
        if response.json()["status"] == status or time.monotonic() > deadline:
            return response
        time.sleep(0.01)


class Gate:
    """A loader that blocks until released, then returns the family."""

    def __init__(self, family: EmbeddingFamily) -> None:
        self.family = family
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, _: Settings) -> EmbeddingFamily:
        self.entered.set()
        if not self.release.wait(timeout=20):
            raise RuntimeError("test gate never released")
        return self.family


@contextmanager
def loading_app(settings: Settings, gate: Gate) -> Iterator[TestClient]:
    try:
        with TestClient(create_app(settings, loader=gate), headers=AUTH) as client:  # model_path: for keyed callers
            assert gate.entered.wait(timeout=10)
            yield client
            gate.release.set()
    finally:
        gate.release.set()  # never leave the loader thread blocked


def test_health_is_503_loading_then_200_ok(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = Gate(tiny_family)
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
    gate = Gate(tiny_family)
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
    gate = Gate(tiny_family)
    with loading_app(make_settings(tiny_model_dir), gate) as client:
        client.headers.pop("Authorization")
        assert client.get("/health").status_code == 503
        assert client.post("/v1/embeddings", json={"input": "hi"}).status_code == 401


def test_health_reports_configured_sizes(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    settings = make_settings(tiny_model_dir, embedding_dimension=8, max_image_size=512, max_image_height=300)
    gate = Gate(tiny_family)
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


def failing_app(settings: Settings, loader: Callable[[Settings], EmbeddingFamily], fatal: list[str]) -> TestClient:
    return TestClient(create_app(settings, loader=loader, on_fatal=fatal.append), headers=AUTH)


def test_model_unavailable_gives_503_error_with_detail(tiny_model_dir: Path) -> None:
    message = "Model X is not on this machine; download it first."

    def loader(_: Settings) -> EmbeddingFamily:
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
    def loader(_: Settings) -> EmbeddingFamily:
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
    def loader(_: Settings) -> EmbeddingFamily:
        raise ModelUnavailable("no weights.")

    with failing_app(make_settings(tiny_model_dir), loader, []) as client:
        assert wait_for(client, "error").status_code == 503
        response = client.post("/v1/embeddings", json={"input": "hi"}, headers=AUTH)
        assert response.status_code == 503
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "loading" not in error["message"], "a failed load must not tell clients to keep retrying"
        assert error["code"] != "model_loading"


class WarmUpFails:
    """The real adapter, except that every forward pass fails (a device fault during warm-up)."""

    def __init__(self, inner: EmbeddingFamily) -> None:
        self.inner = inner
        self.name, self.dimension, self.device, self.dtype = inner.name, inner.dimension, inner.device, inner.dtype

    def prepare(self, item: Item) -> PreparedItem:
        return self.inner.prepare(item)

    def collate(self, items: list[PreparedItem]) -> Batch:
        return self.inner.collate(items)

    def run(self, batch: Batch) -> np.ndarray:
        raise RuntimeError("device fault during warm-up (simulated)")

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return self.inner.finish(pooled, dimensions, normalize)


def test_a_failing_warm_up_is_reported_as_an_error(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    broken: Any = WarmUpFails(tiny_family)
    fatal: list[str] = []
    with failing_app(make_settings(tiny_model_dir), lambda _: broken, fatal) as client:
        response = wait_for(client, "error", timeout=3)
        body = response.json()
        assert body["status"] == "error", "the server must not stay 'loading' forever when warm-up fails"
        assert response.status_code == 503
        assert body["detail"]
        assert len(fatal) == 1


# ---- resolve_model_path ---------------------------------------------------------------------------------------


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message
    assert message.endswith(".")
    assert not re.search(r"[.!?]\s+[A-Z]", message), message


@pytest.mark.parametrize("relative", ["missing-model", "deep/er/missing"])
def test_missing_local_folder(tmp_path: Path, relative: str) -> None:
    path = str(tmp_path / relative)
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_path(path)
    message = str(caught.value)
    assert_one_sentence(message)
    assert path in message
    assert "MODEL_PATH" in message


@pytest.mark.parametrize("path", ["./models/not-here", "~/no-such-model-folder-xyz", "a/b/c"])
def test_folder_like_paths_that_do_not_exist(path: str) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_path(path)
    assert_one_sentence(str(caught.value))
    assert path in str(caught.value)


def test_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_path(str(tmp_path))
    message = str(caught.value)
    assert_one_sentence(message)
    assert "config.json" in message
    assert str(tmp_path) in message


def test_a_folder_with_config_json_is_returned_as_is(tiny_model_dir: Path) -> None:
    assert resolve_model_path(str(tiny_model_dir)) == tiny_model_dir


def test_uncached_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "nobody-at-all/not-a-real-model-7f3a"
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_path(hub_id)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert_one_sentence(message)
    assert hub_id in message
    assert f"download {hub_id}" in message  # says how to get it


# ---- random weights (the demo) ---------------------------------------------------------------------------------

RANDOM_NOTE = (
    "MODEL_PATH={path} holds RANDOM weights (a test checkpoint built by devtools.tiny_checkpoint): "
    "its vectors are meaningless, though served as 'Qwen3-VL-Embedding-2B'"
)


def test_the_tiny_checkpoint_is_marked_random(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["embedding_api_random_weights"] is True
    assert has_random_weights(str(tiny_model_dir)) is True


@pytest.mark.parametrize(
    "config", ['{"model_type": "qwen3_vl"}', '{"embedding_api_random_weights": "yes"}', "[1]", "{"]
)
def test_other_checkpoints_are_not_random(tmp_path: Path, config: str) -> None:
    (tmp_path / "config.json").write_text(config)
    assert has_random_weights(str(tmp_path)) is False


def test_a_missing_folder_or_a_hub_id_is_not_random(tmp_path: Path) -> None:
    assert has_random_weights(str(tmp_path / "nothing")) is False
    assert has_random_weights("Qwen/Qwen3-VL-Embedding-2B") is False


def test_health_says_the_weights_are_random(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(tiny_family)
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
    gate = Gate(tiny_family)
    gate.release.set()
    with loading_app(make_settings(tmp_path), gate) as client:
        body = wait_for(client, "ok").json()
    assert body["random_weights"] is False
    assert body["note"] is None


# ---- what /health shows without a key ----------------------------------------------------------------------------


def test_health_without_a_key_hides_the_model_path(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = Gate(tiny_family)
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
    def loader(_: Settings) -> EmbeddingFamily:
        raise RuntimeError("CUDA error: no kernel image")

    with failing_app(make_settings(tiny_model_dir), loader, []) as client:
        wait_for(client, "error")
        body = client.get("/health", headers={"Authorization": ""}).json()
    assert body["model_path"] is None
    assert "CUDA error: no kernel image" in body["detail"] and str(tiny_model_dir) not in body["detail"]


def test_health_with_auth_off_shows_the_model_path(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = Gate(tiny_family)
    gate.release.set()
    with loading_app(make_settings(tiny_model_dir, api_key=""), gate) as client:
        body = wait_for(client, "ok").json()
    assert body["model_path"] == str(tiny_model_dir)  # everyone may use every route then


# ---- HEAD /health ----------------------------------------------------------------------------------------------


def test_head_health_answers_like_get_without_a_body(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    gate = Gate(tiny_family)
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


# ---- the older project's MODEL_PATH ----------------------------------------------------------------------------


@pytest.mark.parametrize("relative", ["./models/Qwen3-VL-Embedding-2B", "models/Qwen3-VL-Embedding-2B"])
def test_a_known_model_folder_not_downloaded_yet_says_make_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_path(relative)
    assert str(caught.value) == (
        f"MODEL_PATH={relative} does not hold the model yet: run `make download` (or `python -m embedding_api "
        "download`) to fetch Qwen/Qwen3-VL-Embedding-2B into that folder, or point MODEL_PATH at a folder that has "
        "the model."
    )
    assert_one_sentence(str(caught.value))


def test_an_embedding_dimension_over_the_models_size_fails_the_start(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    fatal: list[str] = []
    settings = make_settings(tiny_model_dir, embedding_dimension=2048)
    with failing_app(settings, lambda _: tiny_family, fatal) as client:
        response = wait_for(client, "error")
        assert response.status_code == 503
    assert fatal == [
        f"EMBEDDING_DIMENSION=2048 is more than the 64 dimensions of MODEL_PATH={tiny_model_dir}; "
        "set at most 64 or leave it empty."
    ]
    assert_one_sentence(fatal[0])
