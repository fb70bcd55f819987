"""Running `python -m embedding_api` as the user would: a clean environment, and the older project's `.env`."""

from __future__ import annotations

import os
import subprocess
import time

import httpx

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


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float) -> httpx.Response | None:
    """Poll `url`/health until it answers 200, the process exits or `seconds` pass; the last answer (None: none)."""
    deadline, health = time.monotonic() + seconds, None
    while time.monotonic() < deadline and process.poll() is None:
        try:
            health = httpx.get(f"{url}/health", timeout=2)
            if health.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return health
