"""SIGTERM on a real server process (`python -m embedding_api`): requests in flight finish with the right vector,
new ones are refused, and the process exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import API_KEY, free_port
from tests.support.paths import REPO_ROOT


def test_sigterm_drains_in_flight_requests_and_exits_zero(tiny_model_dir: Path) -> None:
    port = free_port()
    env = dict(
        os.environ,
        MODEL_PATH=str(tiny_model_dir),
        PORT=str(port),
        HOST="127.0.0.1",
        API_KEY=API_KEY,
        LOG_LEVEL="warning",
        SHUTDOWN_TIMEOUT="20",
        DEVICE="cpu",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "embedding_api"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        expected = np.array(
            httpx.post(f"{url}/v1/embeddings", json={"input": "steady"}, headers=headers, timeout=30).json()["data"][0][
                "embedding"
            ]
        )
        sent_term = threading.Event()

        def one(i: int) -> tuple[str, float]:
            try:
                response = httpx.post(
                    f"{url}/v1/embeddings", json={"input": ["steady"] * 8}, headers=headers, timeout=60
                )
            except httpx.HTTPError:
                return ("refused" if sent_term.is_set() else "error-before-term", 0.0)
            if response.status_code != 200:
                return (f"status-{response.status_code}", 0.0)
            got = np.array(response.json()["data"][7]["embedding"])
            return ("ok", float(np.abs(got - expected).max()))

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(120)]
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            sent_term.set()
            outcomes = [future.result() for future in futures]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    kinds = {kind for kind, _ in outcomes}
    assert kinds <= {"ok", "refused", "status-503"}, kinds
    ok = [diff for kind, diff in outcomes if kind == "ok"]
    assert len(ok) >= 10  # requests were in flight when the signal came
    assert max(ok) <= 1e-5  # and every accepted one finished with the right vector
