from __future__ import annotations

from pathlib import Path

import pytest

from embedding_api.settings import Settings


def test_defaults_match_the_product() -> None:
    settings = Settings(_env_file=None)
    assert settings.port == 6008 and settings.host == "0.0.0.0"
    assert settings.model_path == "Qwen/Qwen3-VL-Embedding-2B"
    assert settings.model_name == "Qwen3-VL-Embedding-2B"
    assert settings.max_length == 8192
    assert settings.min_pixels == 4096 and settings.max_pixels == 1_843_200
    assert settings.embedding_dimension is None
    assert settings.api_keys == ()


def test_every_setting_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_keys_are_split_and_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", " a, b ,,c ")
    monkeypatch.setenv("EMBEDDING_DIMENSION", "")
    monkeypatch.setenv("MAX_IMAGE_WIDTH", "512")
    settings = Settings(_env_file=None)
    assert settings.api_keys == ("a", "b", "c")
    assert settings.embedding_dimension is None
    assert settings.max_image_width == 512


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("PORT=7001\nMODEL_NAME=custom\n")
    settings = Settings(_env_file=env)
    assert settings.port == 7001 and settings.model_name == "custom"


def test_env_example_lists_every_setting() -> None:
    example = (Path(__file__).parent.parent / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, name
