"""Running `python -m embedding_api` as the user would: a clean environment, and the older project's `.env`."""

from __future__ import annotations

import os

from embedding_api.environment import PROCESS_VARIABLES
from embedding_api.settings import Settings
from tests.support.paths import OLDER_ENV, REPO_ROOT


def cli_env(**env: str) -> dict[str, str]:
    """This process's environment without settings or process variables (so only `.env` and `env` count)."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key.upper() not in PROCESS_VARIABLES
    }
    clean.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_DISABLE_TELEMETRY="1", **env)
    return clean


def older_env(model_path: str | None = None, device: str | None = None) -> str:
    """The older project's .env, verbatim but for MODEL_PATH and DEVICE when given."""
    text = OLDER_ENV.read_text(encoding="utf-8")
    if model_path is not None:
        text = text.replace("MODEL_PATH=./models/Qwen3-VL-Embedding-2B ", f"MODEL_PATH={model_path} ")
    if device is not None:
        text = text.replace("DEVICE=cuda ", f"DEVICE={device} ")
    return text
