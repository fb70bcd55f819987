"""Shared fixtures: the tiny offline checkpoint (built once per session), apps, a live server, an image server."""

from __future__ import annotations

import base64
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from devtools.tiny_checkpoint import TinySpec, build_tiny_checkpoint
from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.loader import load_family
from embedding_api.http.app import create_app
from embedding_api.settings import Settings

API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"), TinySpec())


def make_settings(model_dir: Path | str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_path": str(model_dir),
        "api_key": API_KEY,
        "device": "cpu",
        "_env_file": None,
        "allow_private_media_urls": True,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def tiny_family(tiny_model_dir: Path) -> EmbeddingFamily:
    return load_family(make_settings(tiny_model_dir))


def wait_ready(client: Any, timeout: float = 60) -> None:
    """Poll /health through any client with a requests-style `get` until the model is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the app did not become ready")


@pytest.fixture
def make_client(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> Iterator[Callable[..., TestClient]]:
    """A TestClient over the real tiny model; keyword arguments override settings."""
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        settings = make_settings(tiny_model_dir, **overrides)
        client = TestClient(create_app(settings, loader=lambda *_: tiny_family))
        client.__enter__()
        opened.append(client)
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, settings: Settings, family: EmbeddingFamily) -> None:
        self.port = free_port()
        self.app = create_app(settings, loader=lambda *_: family)
        # keep-alive longer than any idle gap under load: a connection closed as the client reuses it is a ReadError
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_keep_alive=75)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("the live server did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def live_server(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tiny_model_dir), tiny_family) as server:
        yield server


# ---- images ---------------------------------------------------------------------------------------------------


def make_image(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8")
    image = Image.fromarray(pixels, "RGB")
    return image if mode == "RGB" else image.convert(mode)


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


class _BackloggedServer(ThreadingHTTPServer):
    request_queue_size = 256  # a request's media are fetched all at once: the default backlog of 5 drops some


class LocalHttpServer:
    """An HTTP(S) server on 127.0.0.1 with per-path status, headers and body; records hits, Host headers and SNI."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: dict[str, int] = {}
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        routes, hits, hosts = self.routes, self.hits, self.hosts

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[self.path] = hits.get(self.path, 0) + 1
                hosts.append(self.headers.get("Host", ""))
                status, headers, body = routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _BackloggedServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class MediaServer(LocalHttpServer):
    """Serves media bodies by path; `add` returns the URL to put in a request."""

    def add(self, path: str, body: bytes, mime: str = "image/png", status: int = 200) -> str:
        self.routes[path] = (status, {"Content-Type": mime}, body)
        return self.url(path)


@pytest.fixture
def media_server() -> Iterator[MediaServer]:
    server = MediaServer()
    yield server
    server.close()
