"""`embedding_api.families.loader`: `resolve_model_path`'s one-sentence refusals and `has_random_weights`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from embedding_api.families.loader import ModelUnavailable, has_random_weights, resolve_model_path
from tests.support.assertions import assert_one_sentence

# ---- resolve_model_path ---------------------------------------------------------------------------------------


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


# ---- has_random_weights (the demo checkpoint) -----------------------------------------------------------------


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
