"""`python -m embedding_api` started from the older project's `.env` (with a checkpoint and DEVICE=cpu): a real
server process that answers /health, embeddings and HEAD, then exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support.cli import cli_env, older_env, wait_healthy


@pytest.mark.slow
def test_the_older_env_with_a_checkpoint_and_cpu_starts_on_the_first_try(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / ".env").write_text(older_env(str(tiny_model_dir), "cpu"), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        # The real environment wins over .env: the test's free loopback port instead of its PORT=6008.
        server = subprocess.Popen(
            [sys.executable, "-m", "embedding_api"],
            cwd=tmp_path,
            env=cli_env(PORT=str(port), HOST="127.0.0.1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        health = wait_healthy(url, server, 120)
        assert health is not None and health.status_code == 200, log_path.read_text()
        body = health.json()
        assert body["model"] == "Qwen3-VL-Embedding-2B"
        assert body["device"] == "cpu"
        assert (body["max_image_width"], body["max_image_height"]) == (512, 512)
        assert body["random_weights"] is True
        key = {"Authorization": "Bearer sk-embedding-api-secret-key-20260114"}
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, timeout=30).status_code == 401
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, headers=key, timeout=30).status_code == 200
        head = httpx.head(f"{url}/health", timeout=5)
        assert head.status_code == 200 and head.content == b""
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    log = log_path.read_text()
    assert "Traceback" not in log and "unknown setting" not in log
    assert "holds RANDOM weights" in log
