"""A real uvicorn server on 127.0.0.1 in a thread, over the real model loader (for tests that serve several models)."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from embedding_api.http.app import create_app
from tests.conftest import free_port, make_settings


class Server:
    def __init__(self, **overrides: object) -> None:
        self.port = free_port()
        settings = make_settings("unused", **overrides)
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
