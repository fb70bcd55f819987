"""`embedding_api.media.decode`: inline decoding, image decoding to RGB, the request pixel budget, and video files
probed then decoded one wanted frame at a time."""

from __future__ import annotations

import base64
import io
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.frames import QwenFramePicker
from embedding_api.media.decode import (
    MAX_DECODED_FRAMES,
    MediaLimits,
    PixelBudget,
    decode_image,
    decode_inline,
    decode_video,
)
from embedding_api.media.parse import is_url
from tests.conftest import b64, data_uri, image_bytes, make_image
from tests.support.media import make_video, png_claiming

LIMITS = MediaLimits()
PARAM = "input[2]"


def decode_error(data: bytes, limits: MediaLimits = LIMITS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_image(data, PARAM, limits)
    error = caught.value
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert error.status == 400
    assert error.param == PARAM
    assert str(error).startswith(f"{PARAM}: ")
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
    assert f"expected {expect}/*" in str(error)


def test_data_uri_that_is_not_base64() -> None:
    error = inline_error("data:image/png,rawbytes")
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert "base64" in str(error)


@pytest.mark.parametrize("source", ["not base64 at all!", "%%%%", "hello, world", "abcde", "ab=cd"])
def test_garbage_is_refused(source: str) -> None:
    assert inline_error(source).kind is ErrorKind.MEDIA_DECODE


@pytest.mark.parametrize("source", ["ftp://example.com/a.png", "file:///etc/passwd", "s3://bucket/key.png"])
def test_other_url_schemes_are_refused(source: str) -> None:
    assert is_url(source)  # so the resolver hands it to the fetcher, whose URL guard refuses the scheme
    error = inline_error(source)  # and as inline data it is nothing
    assert error.kind is ErrorKind.MEDIA_DECODE
    assert str(error) == f"{PARAM}: is not a URL, a data URI or valid base64"


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
    vectors are compared with it in tests/unit/families/test_qwen3_vl.py)."""
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
    assert "decoded" in str(error)


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
    assert "64x48" in str(error)
    assert decode_image(data, PARAM, MediaLimits(max_image_pixels=64 * 48)).size == (64, 48)


def test_decompression_bomb_header_is_refused_before_decoding() -> None:
    error = decode_error(png_claiming(50_000, 50_000))
    # The header's size is checked against MAX_IMAGE_PIXELS (default 40,000,000) before any pixel is decoded.
    assert str(error).endswith("image is 50000x50000, above the 40000000 pixel limit")


def test_request_pixel_budget_counts_decoded_images() -> None:
    budget = PixelBudget(100 * 100 * 2)
    decode_image(image_bytes(Image.new("RGB", (100, 100))), "input[0]", LIMITS, budget)
    decode_image(image_bytes(Image.new("RGB", (100, 100))), "input[1]", LIMITS, budget)
    assert budget.left == 0
    with pytest.raises(ApiError) as caught:
        decode_image(image_bytes(Image.new("RGB", (1, 1))), "input[2]", LIMITS, budget)
    assert caught.value.param == "input[2]" and "MAX_REQUEST_PIXELS" in str(caught.value)


# ---- decode_video directly: what it keeps and how much it decodes -----------------------------------------------


def test_video_sampling_keeps_source_indices_and_rate() -> None:
    clip = decode_video(make_video(frames=20, rate=4), "input[0]", MediaLimits(frames=QwenFramePicker()))
    assert clip.fps == 4.0
    assert clip.frame_indices == [0, 6, 13, 19]  # 5 s: 4 frames (qwen-vl-utils' minimum), rounded linspace
    frames = list(clip.frames)
    assert len(clip.frames) == len(frames) == 4
    assert all(frame.mode == "RGB" and frame.size == (64, 48) for frame in frames)
    assert frames[1].getpixel((5, 5))[0] == pytest.approx(6 * 40 % 256, abs=6)


def test_long_video_is_spread_over_max_video_frames() -> None:
    clip = decode_video(
        make_video(frames=300, rate=10, size=(16, 16)), "input[0]", MediaLimits(frames=QwenFramePicker(8))
    )
    assert clip.frame_indices == [0, 43, 85, 128, 171, 214, 256, 299]
    assert len(list(clip.frames)) == 8


def test_frames_are_decoded_only_when_iterated_and_only_the_wanted_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probing decodes nothing; iterating converts only the wanted frames and stops after the last of them."""
    converted: list[int] = []
    original = av.VideoFrame.to_image

    def counting(frame: av.VideoFrame, *args: Any, **kwargs: Any) -> Image.Image:
        converted.append(1)
        return original(frame, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_image", counting)
    clip = decode_video(make_video(frames=40, rate=4), "input[0]", MediaLimits(frames=QwenFramePicker(4)))
    assert converted == []
    assert len(list(clip.frames)) == 4
    assert len(converted) == 4


def test_frame_cap_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    import embedding_api.media.decode as media

    monkeypatch.setattr(media, "MAX_DECODED_FRAMES", 10)
    with pytest.raises(ApiError) as caught:
        decode_video(make_video(frames=30, rate=30, size=(16, 16)), "input[0]", MediaLimits(frames=QwenFramePicker()))
    assert caught.value.status == 400 and "10" in str(caught.value)
    assert MAX_DECODED_FRAMES == 20_000


def test_unstated_length_is_counted_from_packets() -> None:
    """Matroska states no frame count: packets are counted, giving the same plan as the mp4 of the same frames."""
    clip = decode_video(
        make_video(frames=20, rate=4, fmt="matroska"), "input[0]", MediaLimits(frames=QwenFramePicker())
    )
    assert clip.frame_indices == [0, 6, 13, 19]
    assert len(list(clip.frames)) == 4


def test_overstated_length_fails_the_item_when_the_stream_ends_early(monkeypatch: pytest.MonkeyPatch) -> None:
    import embedding_api.media.decode as media

    monkeypatch.setattr(media, "_frame_count", lambda *args: 500)
    clip = decode_video(make_video(frames=20, rate=4), "input[0]", MediaLimits(frames=QwenFramePicker()))
    with pytest.raises(ApiError) as caught:
        list(clip.frames)
    assert caught.value.status == 400 and "ended" in str(caught.value)


def test_stated_length_above_the_frame_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import embedding_api.media.decode as media

    monkeypatch.setattr(media, "_frame_count", lambda *args: MAX_DECODED_FRAMES + 1)
    with pytest.raises(ApiError) as caught:
        decode_video(make_video(), "input[0]", MediaLimits(frames=QwenFramePicker()))
    assert caught.value.status == 400 and str(MAX_DECODED_FRAMES) in str(caught.value)


def test_non_video_containers_are_refused() -> None:
    with pytest.raises(ApiError) as caught:
        decode_video(make_video(fmt="nut"), "input[0]", MediaLimits(frames=QwenFramePicker()))
    assert caught.value.status == 400
