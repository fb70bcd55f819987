"""Bytes to pixels: data URIs and base64, images (any colour mode to RGB), video files probed then decoded one
frame at a time, and the pixel budget of one request."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from qwen_vl_utils import vision_process

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import FramePicker
from embedding_api.items import VideoClip

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# FFmpeg demuxers a video file may be opened with (real video containers only; no playlists or concat lists).
VIDEO_FORMATS = "mov,mp4,matroska,webm,avi,mpegts,mpeg,flv,ogg,asf,gif,m4v,h264,hevc"
DEFAULT_VIDEO_FPS = 24.0
MAX_DECODED_FRAMES = 20_000  # a video needing more frames decoded than this is refused (about 11 minutes at 30 fps)


# Pillow's process-wide bomb check is replaced by decode_image's per-server MAX_IMAGE_PIXELS, which reads the same
# header before any pixel is decoded; leaving Pillow's lower default in force would cap what operators can raise.
Image.MAX_IMAGE_PIXELS = None


class EveryFrame:
    """No choice made: every frame (for callers without a model, such as tools and tests of decoding alone)."""

    def list_positions(self, count: int) -> list[int]:
        return list(range(count))

    def file_indices(self, total: int, fps: float) -> list[int]:
        return list(range(total))


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 200_000_000
    frames: FramePicker = field(default_factory=EveryFrame)  # only these frames are fetched and decoded


class PixelBudget:
    """Decoded image pixels one request may hold (its images and frame-list frames), taken from each image's header
    before it is decoded. Video files are not counted: their frames are decoded one at a time when prepared."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self._lock = threading.Lock()  # decoding runs in worker threads

    def take(self, pixels: int, param: str) -> None:
        with self._lock:
            if pixels > self.left:
                raise _error(
                    ErrorKind.MEDIA_DECODE,
                    f"the request's images need more than MAX_REQUEST_PIXELS={self.limit} decoded pixels; "
                    "send fewer or smaller images, or split the request",
                    param,
                )
            self.left -= pixels


def _error(kind: ErrorKind, message: str, param: str) -> ApiError:
    return ApiError(kind, message, param=param)


def decode_inline(source: str, param: str, *, expect: str) -> bytes:
    """Bytes of a data URI (whose type must be `expect`/*) or of raw base64."""
    match = _DATA_URI.match(source)
    if match:
        mime = (match.group("mime") or "").lower()
        if not mime.startswith(f"{expect}/"):
            raise _error(ErrorKind.MEDIA_DECODE, f"data URI has type {mime or 'none'!r}, expected {expect}/*", param)
        if not match.group("b64"):
            raise _error(ErrorKind.MEDIA_DECODE, "data URI must be base64-encoded (';base64,')", param)
        payload = source[match.end() :]
    else:
        payload = source
    if not _BASE64_CHARS.match(payload):
        raise _error(ErrorKind.MEDIA_DECODE, "is not a URL, a data URI or valid base64", param)
    compact = re.sub(r"\s+", "", payload)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _error(ErrorKind.MEDIA_DECODE, "is not valid base64", param) from None


def decode_image(data: bytes, param: str, limits: MediaLimits, budget: PixelBudget | None = None) -> Image.Image:
    """Open real image formats only; first frame; RGB (transparent areas on white, as the recipe does)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            if image.width * image.height > limits.max_image_pixels:
                raise _error(
                    ErrorKind.MEDIA_DECODE,
                    f"image is {image.width}x{image.height}, above the {limits.max_image_pixels} pixel limit",
                    param,
                )
            if budget is not None:
                budget.take(image.width * image.height, param)
            image.seek(0)
            image.load()
            return to_rgb(image)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _error(ErrorKind.MEDIA_DECODE, "image is too large to decode safely", param) from None
    except Exception:
        raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as an image", param) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as qwen-vl-utils makes it (RGBA on white, every other mode a plain convert that drops alpha), except
    16/32-bit grey, scaled to 8 bits by its high byte (a plain convert clips it to white)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values >> 8  # 16-bit samples: keep the high byte
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "RGB":
        return image
    rgb: Image.Image = vision_process.to_rgb(image)
    return rgb


def _open_video(data: bytes) -> Any:
    import av

    return av.open(io.BytesIO(data), container_options={"format_whitelist": VIDEO_FORMATS})


def decode_video(data: bytes, param: str, limits: MediaLimits) -> VideoClip:
    """A video file, probed and planned: its frame count (stated, else counted by demuxing without decoding), its
    fps, and the frames to take (`limits.frames`). The frames themselves are decoded later, one at a
    time, when the clip is prepared (`FileFrames`), so memory holds one full-size frame at most.

    Frames above `max_image_pixels` and videos of more than `MAX_DECODED_FRAMES` frames are refused.
    """
    try:
        import av  # noqa: F401
    except ImportError:
        raise _error(
            ErrorKind.UNSUPPORTED_INPUT,
            "video files need PyAV on the server (pip install av); send frames instead",
            param,
        ) from None
    try:
        with _open_video(data) as container:
            if not container.streams.video:
                raise _error(ErrorKind.MEDIA_DECODE, "has no video stream", param)
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_VIDEO_FPS
            if not math.isfinite(rate) or rate <= 0:
                rate = DEFAULT_VIDEO_FPS
            _check_frame_size(stream.codec_context.width or 0, stream.codec_context.height or 0, param, limits)
            size = (stream.codec_context.height or 0, stream.codec_context.width or 0)
            total = _frame_count(container, stream)
            if total > MAX_DECODED_FRAMES:
                raise _too_many_frames(total, param)
    except ApiError:
        raise
    except Exception:
        raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as a video", param) from None
    if total < 1:
        raise _error(ErrorKind.MEDIA_DECODE, "video has no frames", param)
    indices = limits.frames.file_indices(total, rate)
    frames = FileFrames(data, indices, param, limits, size=size)
    return VideoClip(frames=frames, fps=rate, frame_indices=indices)


def _check_frame_size(width: int, height: int, param: str, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise _error(
            ErrorKind.MEDIA_DECODE,
            f"video frames are {width}x{height}, above the {limits.max_image_pixels} pixel limit",
            param,
        )


def _too_many_frames(count: int, param: str) -> ApiError:
    return _error(
        ErrorKind.MEDIA_DECODE, f"video has {count} frames or more, above the {MAX_DECODED_FRAMES} frame limit", param
    )


def _frame_count(container: Any, stream: Any) -> int:
    """Frames in the stream: as the file states them, else its packets counted (demuxing only, no decoding,
    stopping one past the cap)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    count = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if count > MAX_DECODED_FRAMES:
                break
    return count


class FileFrames:
    """The planned frames of a video file, decoded one at a time as they are iterated (RGB images).

    Decoding stops after the last wanted frame. A stream that ends before it, or fails to decode, raises a 4xx
    error for the item."""

    def __init__(
        self, data: bytes, indices: list[int], param: str, limits: MediaLimits, size: tuple[int, int] = (0, 0)
    ) -> None:
        self.height, self.width = size  # as the stream states it (0 when unknown)
        self.data = data
        self.indices = indices
        self.param = param
        self.limits = limits

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Image.Image]:
        wanted = set(self.indices)
        last = max(self.indices, default=-1)
        try:
            with _open_video(self.data) as container:
                for index, frame in enumerate(container.decode(container.streams.video[0])):
                    if index >= MAX_DECODED_FRAMES:
                        raise _too_many_frames(index + 1, self.param)
                    _check_frame_size(frame.width, frame.height, self.param, self.limits)
                    if index in wanted:
                        image = to_rgb(frame.to_image())
                        del frame
                        yield image
                    if index >= last:
                        return
        except ApiError:
            raise
        except Exception:
            raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as a video", self.param) from None
        raise _error(ErrorKind.MEDIA_DECODE, f"video ended before its frame {last}", self.param)
