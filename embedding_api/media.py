"""Media references -> decoded images and video frames (URLs fetched with httpx, data URIs and base64 decoded)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.fetch import MediaFetcher, is_fetchable
from embedding_api.inputs import ItemSpec, MediaRef, VideoSpec
from embedding_api.items import Item, VideoClip
from embedding_api.sampling import even_positions

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# FFmpeg demuxers a video file may be opened with (real video containers only; no playlists or concat lists).
VIDEO_FORMATS = "mov,mp4,matroska,webm,avi,mpegts,mpeg,flv,ogg,asf,gif,m4v,h264,hevc"
VIDEO_SAMPLE_FPS = 1.0
DEFAULT_VIDEO_FPS = 24.0
MAX_DECODED_FRAMES = 20_000  # a video needing more frames decoded than this is refused (about 11 minutes at 30 fps)


# Pillow's process-wide bomb check is replaced by decode_image's per-server MAX_IMAGE_PIXELS, which reads the same
# header before any pixel is decoded; leaving Pillow's lower default in force would cap what operators can raise.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 40_000_000
    max_video_frames: int = 64


def _error(kind: ErrorKind, message: str, param: str) -> ApiError:
    return ApiError(kind, f"{param}: {message}", param=param)


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
    elif "://" in source[:16]:
        scheme = source.split("://", 1)[0]
        raise _error(ErrorKind.MEDIA_FETCH, f"URL scheme {scheme!r} is not supported; use http or https", param)
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


def decode_image(data: bytes, param: str, limits: MediaLimits) -> Image.Image:
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
    """RGB of any Pillow mode: 16/32-bit grey scaled to 8 bits, transparent areas on white, the rest converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values >> 8  # 16-bit samples: keep the high byte
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "La":  # premultiplied alpha
        image = image.convert("LA")
    if image.mode in ("P", "RGBa"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def decode_video(data: bytes, param: str, limits: MediaLimits) -> VideoClip:
    """Frames sampled at 1 fps (at most `max_video_frames`) from a video file, with their source indices.

    The wanted frames are chosen up front from the stream's frame count (or duration); only those become images
    and decoding stops after the last of them, so memory and time stay bounded. Frames above `max_image_pixels`
    and videos of more than `MAX_DECODED_FRAMES` frames are refused.
    """
    try:
        import av
    except ImportError:
        raise _error(
            ErrorKind.UNSUPPORTED_INPUT,
            "video files need PyAV on the server (pip install av); send frames instead",
            param,
        ) from None
    try:
        with av.open(io.BytesIO(data), container_options={"format_whitelist": VIDEO_FORMATS}) as container:
            if not container.streams.video:
                raise _error(ErrorKind.MEDIA_DECODE, "has no video stream", param)
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_VIDEO_FPS
            if not math.isfinite(rate) or rate <= 0:
                rate = DEFAULT_VIDEO_FPS
            _check_frame_size(stream.codec_context.width or 0, stream.codec_context.height or 0, param, limits)
            total = _frame_count(container, stream, rate)
            if total is not None and total > MAX_DECODED_FRAMES:
                raise _error(
                    ErrorKind.MEDIA_DECODE,
                    f"video has about {total} frames, above the {MAX_DECODED_FRAMES} frame limit",
                    param,
                )
            wanted = None if total is None else sample_indices(total, rate, limits.max_video_frames)
            frames, indices, seen = _read_frames(container.decode(stream), wanted, rate, param, limits)
        if total is not None and seen < total and indices != sample_indices(seen, rate, limits.max_video_frames):
            # The stated length was too long (the stream ended early): sample again over the true length.
            with av.open(io.BytesIO(data), container_options={"format_whitelist": VIDEO_FORMATS}) as container:
                stream = container.streams.video[0]
                wanted = sample_indices(seen, rate, limits.max_video_frames)
                frames, indices, _ = _read_frames(container.decode(stream), wanted, rate, param, limits)
    except ApiError:
        raise
    except Exception:
        raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as a video", param) from None
    if not frames:
        raise _error(ErrorKind.MEDIA_DECODE, "video has no frames", param)
    return VideoClip(frames=frames, fps=rate, frame_indices=indices)


def sample_indices(total: int, rate: float, max_frames: int) -> list[int]:
    """Source indices kept from `total` frames at `rate` fps: 1 per second (at least 2, at most `max_frames`),
    spread evenly from the first frame to the last."""
    if total < 2:
        return [0] if total == 1 else []
    wanted = min(total, max(2, min(max_frames, round(total / rate * VIDEO_SAMPLE_FPS))))
    step = (total - 1) / max(1, wanted - 1)
    return sorted({round(i * step) for i in range(wanted)})


def _check_frame_size(width: int, height: int, param: str, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise _error(
            ErrorKind.MEDIA_DECODE,
            f"video frames are {width}x{height}, above the {limits.max_image_pixels} pixel limit",
            param,
        )


def _frame_count(container: Any, stream: Any, rate: float) -> int | None:
    """The stream's frame count when the file states it, else one estimated from its duration; None if unknown."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # in AV_TIME_BASE units
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return max(1, round(seconds * rate))


def _read_frames(
    decoded: Iterator[Any], wanted: list[int] | None, rate: float, param: str, limits: MediaLimits
) -> tuple[list[Image.Image], list[int], int]:
    """Images of the wanted frames (or, with no plan, one per second as they come), their indices, frames seen."""
    frames: list[Image.Image] = []
    indices: list[int] = []
    keep = set(wanted or ())
    last = max(keep, default=-1)
    next_sample = 0.0  # only without a plan: index of the next frame to keep
    seen = 0
    for index, frame in enumerate(decoded):
        seen = index + 1
        if seen > MAX_DECODED_FRAMES:
            raise _error(ErrorKind.MEDIA_DECODE, f"video has more than {MAX_DECODED_FRAMES} frames", param)
        _check_frame_size(frame.width, frame.height, param, limits)
        if wanted is not None:
            if index in keep:
                frames.append(to_rgb(frame.to_image()))
                indices.append(index)
            if index >= last:
                break
        elif index >= next_sample:
            frames.append(to_rgb(frame.to_image()))
            indices.append(index)
            next_sample += rate / VIDEO_SAMPLE_FPS
            if len(frames) >= limits.max_video_frames:
                break
    return frames, indices, seen


class MediaResolver:
    """Fetches and decodes every media reference of a request concurrently."""

    def __init__(
        self,
        fetcher: MediaFetcher,
        limits: MediaLimits,
        on_fetched: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.limits = limits
        self.on_fetched = on_fetched  # (media kind, seconds, bytes) per URL downloaded, for metrics

    async def _bytes(self, ref: MediaRef, expect: str) -> bytes:
        if is_fetchable(ref.source):
            started = time.perf_counter()
            data = await self.fetcher.fetch(ref.source, ref.param)
            if self.on_fetched is not None:
                self.on_fetched(expect, time.perf_counter() - started, len(data))
            return data
        return decode_inline(ref.source, ref.param, expect=expect)

    async def _image(self, ref: MediaRef) -> Image.Image:
        data = await self._bytes(ref, "image")
        return await asyncio.to_thread(decode_image, data, ref.param, self.limits)

    async def _video(self, video: VideoSpec) -> VideoClip:
        if video.url is not None:
            data = await self._bytes(video.url, "video")
            return await asyncio.to_thread(decode_video, data, video.param, self.limits)
        # Only the frames the model will see are fetched and decoded (same even subsampling as the recipe).
        wanted = [video.frames[p] for p in even_positions(len(video.frames), self.limits.max_video_frames)]
        frames = await asyncio.gather(*(self._image(frame) for frame in wanted))
        return VideoClip(frames=list(frames))

    async def _item(self, spec: ItemSpec) -> Item:
        images = [self._image(ref) for ref in spec.images]
        videos = [self._video(video) for video in spec.videos]
        decoded = await asyncio.gather(*images, *videos)
        return Item(
            texts=list(spec.texts),
            images=[image for image in decoded[: len(images)] if isinstance(image, Image.Image)],
            videos=[clip for clip in decoded[len(images) :] if isinstance(clip, VideoClip)],
            instruction=spec.instruction,
        )

    async def resolve(self, specs: list[ItemSpec]) -> list[Item]:
        """All of a request's media at once; the first failure cancels the rest and is raised."""
        tasks = [asyncio.ensure_future(self._item(spec)) for spec in specs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
