"""Hostile and odd media through the app's endpoint (in process): each gets its 4xx or a correct vector, and the
app lives. What `decode_video` keeps and decodes, called directly, is in tests/unit/media/test_decode.py."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from embedding_api.families.base import EmbeddingFamily
from embedding_api.http.app import create_app
from tests.conftest import API_KEY, MediaServer, b64, data_uri, image_bytes, make_image, make_settings, wait_ready
from tests.support.media import gif_claiming, make_video, png_claiming

MAX_IMAGE_BYTES = 100_000
Response = Any  # the test client's response type (its httpx flavour depends on the Starlette version)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> Iterator[TestClient]:
    """One app for the whole module, so the last test can check it survived everything before it."""
    settings = make_settings(tiny_model_dir, max_image_bytes=MAX_IMAGE_BYTES)
    with TestClient(create_app(settings, loader=lambda *_: tiny_family)) as client:
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


def embed(client: TestClient, part: dict[str, Any]) -> Response:
    return client.post("/v1/embeddings", json={"input": [part]})


def image_part(source: str) -> dict[str, Any]:
    return {"type": "image", "data": source}


def vector(response: Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    values = np.array(response.json()["data"][0]["embedding"], dtype=np.float64)
    assert values.size > 0
    assert np.isfinite(values).all()
    assert abs(np.linalg.norm(values) - 1.0) < 1e-3
    return values


def refused(response: Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "input[0]"
    message: str = error["message"]
    assert message.startswith("input[0]: ")
    return message


class EndlessServer:
    """Streams an image body forever, with no Content-Length (bounded: stops after `limit` bytes or on close)."""

    def __init__(self, limit: int = 50_000_000) -> None:
        self.sent = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                chunk = image_bytes(make_image(8, 8)) + b"\x00" * 16_000
                try:
                    while owner.sent < limit:
                        self.wfile.write(chunk)
                        owner.sent += len(chunk)
                except OSError:
                    pass  # the client hung up, as it should

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/endless.png"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- decompression bombs and huge dimensions --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        png_claiming(30_000, 30_000),
        png_claiming(2**31 - 1, 1),
        png_claiming(70_000, 1_000),
        gif_claiming(65_535, 65_535),
    ],
    ids=["png-30000x30000", "png-2^31-wide", "png-70000x1000", "gif-65535x65535"],
)
def test_huge_declared_dimensions_are_refused_from_the_header(server: TestClient, data: bytes) -> None:
    message = refused(embed(server, image_part(data_uri(data))))
    assert "limit" in message or "large" in message or "decoded" in message


def test_decompression_bomb_by_url(server: TestClient, media_server: MediaServer) -> None:
    url = media_server.add("/bomb.png", png_claiming(30_000, 30_000))
    message = refused(embed(server, image_part(url)))
    assert "limit" in message or "large" in message


def test_real_highly_compressible_png_above_the_default_pixel_cap(server: TestClient) -> None:
    data = image_bytes(Image.new("1", (8_000, 8_000), 1))  # 64 megapixels in a few kilobytes
    assert len(data) < MAX_IMAGE_BYTES
    message = refused(embed(server, image_part(b64(data))))
    assert "8000x8000" in message and "limit" in message


def test_real_png_above_a_low_pixel_cap(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_image_pixels=10_000)
    white = image_bytes(Image.new("RGB", (400, 400), (255, 255, 255)))
    assert "400x400" in refused(embed(client, image_part(data_uri(white))))
    vector(embed(client, image_part(data_uri(image_bytes(make_image(100, 100))))))


# ---- bodies that never end, or end too soon ---------------------------------------------------------------------


def test_endless_body_without_content_length_is_cut_off(server: TestClient) -> None:
    endless = EndlessServer()
    try:
        refused(embed(server, image_part(endless.url)))
    finally:
        endless.close()
    assert endless.sent < 50_000_000


def test_truncated_png(server: TestClient) -> None:
    png = image_bytes(make_image(64, 64))
    refused(embed(server, image_part(data_uri(png[: len(png) // 2]))))


def test_truncated_jpeg(server: TestClient, media_server: MediaServer) -> None:
    jpeg = image_bytes(make_image(64, 64), "JPEG")
    url = media_server.add("/cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")
    refused(embed(server, image_part(url)))
    refused(embed(server, image_part(data_uri(jpeg[: len(jpeg) // 2], "image/jpeg"))))


# ---- inline payloads that are not images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["this is not base64!", "data:image/png;base64,@@@@", "data:image/png;base64,abcde", "QUJD" * 3 + "="],
    ids=["text", "bad-chars", "bad-length", "valid-base64-not-an-image"],
)
def test_malformed_base64(server: TestClient, source: str) -> None:
    refused(embed(server, image_part(source)))


def test_data_uri_of_the_wrong_type(server: TestClient) -> None:
    message = refused(embed(server, image_part(data_uri(image_bytes(make_image()), "text/plain"))))
    assert "text/plain" in message


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'/>", b""],
    ids=["pdf", "svg", "empty"],
)
def test_non_image_formats(server: TestClient, data: bytes) -> None:
    refused(embed(server, image_part(data_uri(data))))


def test_format_outside_the_allowed_list(server: TestClient) -> None:
    refused(embed(server, image_part(data_uri(image_bytes(make_image(8, 8), "PPM")))))


# ---- odd but valid images: a correct vector ---------------------------------------------------------------------


def test_one_pixel_image_is_resized_up(server: TestClient) -> None:
    vector(embed(server, image_part(data_uri(image_bytes(Image.new("RGB", (1, 1), (200, 30, 60)))))))


def test_cmyk_jpeg(server: TestClient) -> None:
    data = image_bytes(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    vector(embed(server, image_part(data_uri(data, "image/jpeg"))))


def test_16_bit_png(server: TestClient) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    data = image_bytes(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    vector(embed(server, image_part(data_uri(data))))


def test_animated_gif_uses_its_first_frame(server: TestClient, media_server: MediaServer) -> None:
    first = Image.new("RGB", (48, 48), (255, 0, 0))
    first.paste((0, 0, 255), (0, 0, 24, 24))
    second = Image.new("RGB", (48, 48), (0, 255, 0))
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    animated = vector(embed(server, image_part(media_server.add("/anim.gif", buffer.getvalue(), "image/gif"))))
    alone = vector(embed(server, image_part(data_uri(image_bytes(first)))))
    other = vector(embed(server, image_part(data_uri(image_bytes(second)))))
    assert np.allclose(animated, alone, atol=1e-5)
    assert not np.allclose(animated, other, atol=1e-3)


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"], ids=["animated-webp", "apng"])
def test_other_animations_use_their_first_frame(server: TestClient, fmt: str) -> None:
    first = Image.new("RGB", (32, 32), (10, 200, 30))
    second = Image.new("RGB", (32, 32), (200, 10, 30))
    buffer = io.BytesIO()
    save: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    first.save(buffer, format=fmt, save_all=True, append_images=[second], duration=100, loop=0, **save)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    animated = vector(embed(server, image_part(b64(buffer.getvalue()))))
    alone = vector(embed(server, image_part(b64(image_bytes(first)))))
    assert np.allclose(animated, alone, atol=1e-5)


@pytest.mark.parametrize("mode", ["LA", "RGBA", "L", "1", "I", "F"])
def test_other_modes(server: TestClient, mode: str) -> None:
    source = make_image(24, 24, seed=5, mode="L").convert(mode)
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    vector(embed(server, image_part(data_uri(image_bytes(source, fmt)))))


# ---- videos -----------------------------------------------------------------------------------------------------


def test_tiny_mp4_by_url(server: TestClient, media_server: MediaServer) -> None:
    url = media_server.add("/tiny.mp4", make_video(), "video/mp4")
    vector(embed(server, {"type": "video", "data": url}))


def test_tiny_video_by_data_uri(server: TestClient) -> None:
    vector(embed(server, {"type": "video", "data": data_uri(make_video(fmt="matroska"), "video/x-matroska")}))


@pytest.mark.parametrize(
    "data",
    [b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200, b"not a video at all", b"", "half"],
    ids=["bad-mp4-box", "text", "empty", "truncated"],
)
def test_corrupt_video(server: TestClient, media_server: MediaServer, data: bytes | str) -> None:
    if data == "half":
        video = make_video(frames=10)
        data = video[: len(video) // 3]
    assert isinstance(data, bytes)
    url = media_server.add("/corrupt.mp4", data, "video/mp4")
    refused(embed(server, {"type": "video", "data": url}))


def test_video_frames_above_the_pixel_cap(make_client: Callable[..., TestClient], media_server: MediaServer) -> None:
    client = make_client(max_image_pixels=1_000)
    url = media_server.add("/big.mp4", make_video(size=(64, 48)), "video/mp4")
    assert "64x48" in refused(embed(client, {"type": "video", "data": url}))


# ---- after all of it --------------------------------------------------------------------------------------------


def test_server_is_still_healthy_afterwards(server: TestClient) -> None:
    assert server.get("/health").status_code == 200
    vector(server.post("/v1/embeddings", json={"input": "still here"}))
    vector(embed(server, image_part(data_uri(image_bytes(make_image(40, 30))))))
