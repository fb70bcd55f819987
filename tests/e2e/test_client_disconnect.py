"""A client that disconnects from a real uvicorn server (httpx over loopback): its queued items are dropped, and the
server keeps answering."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np

from embedding_api.families.base import EmbeddingFamily
from tests.conftest import API_KEY, LiveServer, make_settings
from tests.fakes import RecordingFamily


def test_disconnected_client_frees_its_queued_items(tiny_model_dir: object, tiny_family: EmbeddingFamily) -> None:
    gate = threading.Event()
    family = RecordingFamily(tiny_family, gate=gate)
    gate.set()  # let the warm-up through
    with LiveServer(make_settings(tiny_model_dir, max_batch_size=1), family) as server:  # type: ignore[arg-type]
        gate.clear()
        engine = server.app.state.runtime.engine
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(
                f"{server.url}/v1/embeddings", json={"input": [f"t{i}" for i in range(6)]}, headers=headers, timeout=0.5
            )
        deadline = time.monotonic() + 5
        while engine.queued_items and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.queued_items == 0
        ran_before = sum(family.batch_sizes)
        gate.set()
        ok = httpx.post(f"{server.url}/v1/embeddings", json={"input": "after"}, headers=headers, timeout=30)
        assert ok.status_code == 200
        assert np.isfinite(np.array(ok.json()["data"][0]["embedding"])).all()
        assert sum(family.batch_sizes) - ran_before <= 3  # at most the batches already cut, plus this request
