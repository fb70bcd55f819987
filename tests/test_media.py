"""`embedding_api.media.resolve`: inline decoding, image decoding to RGB, and resolving media references."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import Item
from embedding_api.media.fetch import FetchLimits, MediaFetcher
from embedding_api.media.parse import parse_input
from embedding_api.media.resolve import MediaLimits, MediaResolver, decode_image, decode_inline
from embedding_api.media.url_guard import UrlPolicy
from tests.conftest import MediaServer, b64, data_uri, image_bytes, make_image

LIMITS = MediaLimits()
FETCH_LIMITS = FetchLimits(policy=UrlPolicy(allow_private=True))  # the test media server is on 127.0.0.1
PARAM = "input[2]"


def decode_error(data: bytes, limits: MediaLimits = LIMITS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_image(data, PARAM, limits)
    error = caught.value
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert error.status == 400
    assert error.param == PARAM
    assert error.message.startswith(f"{PARAM}: ")
    return error


def inline_error(source: str, expect: str = "image") -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_inline(source, PARAM, expect=expect)
    assert caught.value.param == PARAM
    assert caught.value.status == 400
    return caught.value


# ---- decode_inline --------------------------------------------------------------------------------------------


def test_data_uri_gives_its_bytes() -> None:
    png = image_bytes(make_image())
    assert decode_inline(data_uri(png), PARAM, expect="image") == png


def test_data_uri_with_extra_parameters_and_upper_case() -> None:
    payload = b"\x00\x01binary\xff"
    assert decode_inline(f"DATA:IMAGE/JPEG;name=x.jpg;BASE64,{b64(payload)}", PARAM, expect="image") == payload


def test_raw_base64_gives_its_bytes() -> None:
    png = image_bytes(make_image())
    assert decode_inline(b64(png), PARAM, expect="image") == png


def test_raw_base64_without_padding_and_with_line_breaks() -> None:
    payload = bytes(range(256)) * 3 + b"x"
    encoded = b64(payload).rstrip("=")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert decode_inline(wrapped, PARAM, expect="image") == payload


def test_urlsafe_base64() -> None:
    payload = b"\xfb\xff\xbf" * 20 + b"\xfe"
    encoded = base64.urlsafe_b64encode(payload).decode("ascii")
    assert "-" in encoded and "_" in encoded
    assert decode_inline(encoded, PARAM, expect="image") == payload
    assert decode_inline(encoded.rstrip("="), PARAM, expect="image") == payload


def test_video_data_uri_when_a_video_is_expected() -> None:
    assert decode_inline(data_uri(b"fake mp4", "video/mp4"), PARAM, expect="video") == b"fake mp4"


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        (data_uri(b"fake mp4", "video/mp4"), "image"),
        (data_uri(b"\x89PNG", "image/png"), "video"),
        (data_uri(b"text", "text/plain"), "image"),
        ("data:;base64,aGVsbG8=", "image"),
    ],
    ids=["video-as-image", "image-as-video", "text", "no-type"],
)
def test_data_uri_of_the_wrong_type(source: str, expect: str) -> None:
    error = inline_error(source, expect)
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert f"expected {expect}/*" in error.message


def test_data_uri_that_is_not_base64() -> None:
    error = inline_error("data:image/png,rawbytes")
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert "base64" in error.message


@pytest.mark.parametrize("source", ["not base64 at all!", "%%%%", "hello, world", "abcde", "ab=cd"])
def test_garbage_is_refused(source: str) -> None:
    assert inline_error(source).kind is ErrorKind.MEDIA_DECODE


@pytest.mark.parametrize("source", ["ftp://example.com/a.png", "file:///etc/passwd", "s3://bucket/key.png"])
def test_other_url_schemes_are_refused(source: str) -> None:
    error = inline_error(source)
    assert error.kind is ErrorKind.MEDIA_FETCH
    assert "not supported" in error.message


# ---- decode_image ---------------------------------------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_png_stays_exact() -> None:
    source = make_image(40, 30, seed=3)
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == (40, 30)
    assert np.array_equal(pixels(decoded), pixels(source))


def test_jpeg_is_rgb_and_close() -> None:
    source = Image.new("RGB", (32, 16), (200, 40, 90))
    decoded = decode_image(image_bytes(source, "JPEG"), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == (32, 16)
    assert np.abs(pixels(decoded) - np.array([200, 40, 90])).max() <= 4


def test_other_real_formats_open() -> None:
    for fmt in ("WEBP", "BMP", "TIFF"):
        decoded = decode_image(image_bytes(make_image(20, 10), fmt), PARAM, LIMITS)
        assert decoded.mode == "RGB" and decoded.size == (20, 10), fmt


def test_animated_gif_gives_its_first_frame() -> None:
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    blue = Image.new("RGB", (16, 16), (0, 0, 255))
    buffer = io.BytesIO()
    red.save(buffer, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    decoded = decode_image(buffer.getvalue(), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((8, 8)) == (255, 0, 0)


def test_rgba_transparency_lands_on_white() -> None:
    source = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    source.putpixel((0, 0), (10, 20, 30, 0))
    source.putpixel((1, 0), (0, 0, 0, 128))
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((3, 1)) == (10, 20, 30)
    assert all(abs(channel - 127) <= 2 for channel in decoded.getpixel((1, 0)))


def test_la_alpha_is_dropped_as_the_official_path_does() -> None:
    """Only RGBA is composited on white by qwen-vl-utils; grey+alpha is a plain convert that drops alpha."""
    source = Image.new("LA", (2, 1), (50, 255))
    source.putpixel((0, 0), (50, 0))
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.getpixel((0, 0)) == (50, 50, 50)
    assert decoded.getpixel((1, 0)) == (50, 50, 50)


def test_palette_image() -> None:
    source = Image.new("P", (4, 4), 0)
    source.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    source.putpixel((3, 3), 1)
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    assert decoded.getpixel((3, 3)) == (0, 255, 0)


def test_palette_transparency_keeps_the_palette_colour() -> None:
    """As qwen-vl-utils' plain convert: the transparent entry keeps its colour (red here) and the image keeps the
    transparency note, which the model's processor then composites on white, exactly as on the official path (the
    vectors are compared with it in tests/test_qwen3_vl.py)."""
    source = Image.new("P", (2, 1), 0)
    source.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    source.putpixel((1, 0), 1)
    source.info["transparency"] = 0
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    assert decoded.getpixel((1, 0)) == (0, 0, 255)
    assert decoded.info.get("transparency") == (255, 0, 0)


def test_grayscale_image() -> None:
    source = Image.new("L", (3, 3), 77)
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (77, 77, 77)


def test_one_bit_image() -> None:
    source = Image.new("1", (3, 3), 1)
    source.putpixel((0, 0), 0)
    decoded = decode_image(image_bytes(source), PARAM, LIMITS)
    assert decoded.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.getpixel((2, 2)) == (255, 255, 255)


def test_cmyk_jpeg() -> None:
    source = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    data = image_bytes(source, "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data, PARAM, LIMITS)
    assert decoded.mode == "RGB"
    red, green, blue = decoded.getpixel((4, 4))
    assert red >= 240 and green <= 15 and blue <= 15


def test_16_bit_png_is_scaled_to_8_bits() -> None:
    source = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    data = image_bytes(source)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data, PARAM, LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == (3, 1)
    values = [decoded.getpixel((x, 0)) for x in range(3)]
    assert values[0] == (0, 0, 0)
    assert all(abs(channel - 128) <= 1 for channel in values[1])
    assert all(channel >= 254 for channel in values[2])


def test_truncated_png() -> None:
    png = image_bytes(make_image(64, 64))
    error = decode_error(png[: len(png) // 2])
    assert "decoded" in error.message


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is text", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
    ids=["empty", "text", "pdf", "svg"],
)
def test_non_image_bytes(data: bytes) -> None:
    decode_error(data)


def test_formats_outside_the_allowed_list_are_refused() -> None:
    decode_error(image_bytes(make_image(8, 8), "PPM"))


def test_image_above_max_image_pixels() -> None:
    data = image_bytes(make_image(64, 48))
    error = decode_error(data, MediaLimits(max_image_pixels=64 * 48 - 1))
    assert "64x48" in error.message
    assert decode_image(data, PARAM, MediaLimits(max_image_pixels=64 * 48)).size == (64, 48)


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size (cheap to send, costly to decode)."""
    png = bytearray(image_bytes(Image.new("RGB", (1, 1))))
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])
    png[12:29] = body
    png[29:33] = struct.pack(">I", zlib.crc32(body))
    return bytes(png)


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    error = decode_error(_png_claiming(50_000, 50_000))
    assert "large" in error.message or "limit" in error.message


# ---- MediaResolver.resolve ------------------------------------------------------------------------------------


def resolve(raw: Any, limits: MediaLimits = LIMITS) -> list[Item]:
    async def go() -> list[Item]:
        async with httpx.AsyncClient() as client:
            return await MediaResolver(MediaFetcher(client, FETCH_LIMITS), limits).resolve(
                parse_input(raw, max_items=100)
            )

    return asyncio.run(go())


def test_resolve_fetches_and_decodes_every_form(media_server: MediaServer) -> None:
    url = media_server.add("/a.png", image_bytes(Image.new("RGB", (8, 8), (255, 0, 0))))
    inline = image_bytes(Image.new("RGB", (6, 6), (0, 255, 0)))
    items = resolve(
        [
            "text only",
            {"type": "image_url", "image_url": {"url": url}},
            ["caption", {"type": "image", "data": b64(inline)}],
            {"type": "video", "data": [url, data_uri(inline)], "instruction": "Describe."},
        ]
    )
    assert [item.texts for item in items] == [["text only"], [], ["caption"], []]
    assert items[0].images == [] and items[0].videos == []
    assert items[1].images[0].getpixel((0, 0)) == (255, 0, 0)
    assert items[2].images[0].size == (6, 6)
    [clip] = items[3].videos
    assert [frame.getpixel((0, 0)) for frame in clip.frames] == [(255, 0, 0), (0, 255, 0)]
    assert items[3].instruction == "Describe."
    assert media_server.hits["/a.png"] == 2


def test_resolve_names_the_failing_item(media_server: MediaServer) -> None:
    good = media_server.add("/good.png", image_bytes(make_image()))
    with pytest.raises(ApiError) as caught:
        resolve(["a", {"type": "image", "data": good}, "c", {"type": "image", "data": data_uri(b"not an image")}])
    assert caught.value.param == "input[3]"
    assert caught.value.kind is ErrorKind.MEDIA_DECODE


def test_request_pixel_budget_counts_decoded_images() -> None:
    from embedding_api.media.resolve import PixelBudget

    budget = PixelBudget(100 * 100 * 2)
    decode_image(image_bytes(Image.new("RGB", (100, 100))), "input[0]", LIMITS, budget)
    decode_image(image_bytes(Image.new("RGB", (100, 100))), "input[1]", LIMITS, budget)
    assert budget.left == 0
    with pytest.raises(ApiError) as caught:
        decode_image(image_bytes(Image.new("RGB", (1, 1))), "input[2]", LIMITS, budget)
    assert caught.value.param == "input[2]" and "MAX_REQUEST_PIXELS" in caught.value.message
