from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from embedding_api.settings import Settings, settings_errors
from tests.support.paths import OLDER_ENV, REPO_ROOT


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
    example = (REPO_ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, name


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("INFO", "info"),
        ("WARNING", "warning"),
        ("CRITICAL", "critical"),
        ("ERROR", "error"),
        ("Debug", "debug"),
        ("warn", "warning"),
        ("FATAL", "critical"),
        (" info ", "info"),
    ],
)
def test_every_standard_log_level_name_in_any_case(given: str, level: str) -> None:
    assert Settings(_env_file=None, log_level=given).log_level == level


def test_an_unknown_log_level_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, log_level="loud")
    assert settings_errors(caught.value) == [
        "LOG_LEVEL: Input should be 'debug', 'info', 'warning', 'error' or 'critical' (got 'loud')"
    ]


@pytest.mark.parametrize(
    ("given", "device"), [("CUDA", "cuda"), ("cuda:1", "cuda:1"), (" cpu", "cpu"), ("auto", "auto")]
)
def test_device_names_are_read_in_any_case(given: str, device: str) -> None:
    assert Settings(_env_file=None, device=given).device == device


@pytest.mark.parametrize("given", ["gpu", "cuda:", "cuda:x", "0"])
def test_an_unknown_device_is_refused(given: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, device=given)
    assert settings_errors(caught.value) == [
        f"DEVICE: must be auto, cpu, cuda or cuda:N (N the GPU's index) (got {given!r})"
    ]


@pytest.mark.parametrize("blank", [" , ", ",", "   ", " ,, , "])
def test_an_api_key_of_only_blanks_and_commas_is_refused(blank: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, api_key=blank)
    assert settings_errors(caught.value) == [
        "API_KEY: holds only blanks and commas, which would silently turn authentication off: "
        "set a key, or leave API_KEY empty to run without one"
    ]


def test_an_empty_api_key_still_means_auth_off() -> None:
    assert Settings(_env_file=None, api_key="").api_keys == ()


def test_every_invalid_setting_is_reported_at_once_one_line_each() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, port="not-a-port", log_level="loud", max_batch_size=0, api_key=", secret-but-blank ,x")
    assert settings_errors(caught.value) == [
        "PORT: Input should be a valid integer, unable to parse string as an integer (got 'not-a-port')",
        "LOG_LEVEL: Input should be 'debug', 'info', 'warning', 'error' or 'critical' (got 'loud')",
        "MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got 0)",
    ]


def test_an_api_key_is_never_echoed_in_errors() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, api_key=12345)  # not a string
    (line,) = settings_errors(caught.value)
    assert line == "API_KEY: Input should be a valid string"


def test_the_older_projects_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:  # the real environment would win over the file
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=OLDER_ENV)
    assert settings.api_keys == ("sk-embedding-api-secret-key-20260114",)
    assert settings.port == 6008
    assert settings.model_name == "Qwen3-VL-Embedding-2B"
    assert settings.model_path == "./models/Qwen3-VL-Embedding-2B"
    assert settings.device == "cuda"
    assert settings.log_level == "info"
    assert (settings.max_image_size, settings.max_image_width, settings.max_image_height) == (512, 512, 512)
    assert settings.embedding_dimension is None  # commented out there
