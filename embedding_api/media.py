"""Media references -> decoded images and video frames (URLs fetched with httpx, data URIs and base64 decoded)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.fetch import MediaFetcher, is_fetchable
from embedding_api.inputs import ItemSpec, MediaRef, VideoSpec
from embedding_api.items import Item, VideoClip
from embedding_api.sampling import even_positions

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
VIDEO_SAMPLE_FPS = 1.0


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
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _error(ErrorKind.MEDIA_DECODE, "image is too large to decode safely", param) from None
    except Exception:
        raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as an image", param) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[3])
        return background
    return image.convert("RGB")


def decode_video(data: bytes, param: str, limits: MediaLimits) -> VideoClip:
    """Frames sampled at 1 fps (at most `max_video_frames`) from a video file, with their source indices."""
    try:
        import av
    except ImportError:
        raise _error(
            ErrorKind.UNSUPPORTED_INPUT,
            "video files need PyAV on the server (pip install av); send frames instead",
            param,
        ) from None
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            decoded = [frame.to_image() for frame in container.decode(stream)]
            rate = float(stream.average_rate or stream.guessed_rate or 24.0)
    except Exception:
        raise _error(ErrorKind.MEDIA_DECODE, "could not be decoded as a video", param) from None
    if not decoded:
        raise _error(ErrorKind.MEDIA_DECODE, "video has no frames", param)
    total = len(decoded)
    wanted = max(2, min(limits.max_video_frames, round(total / rate * VIDEO_SAMPLE_FPS)))
    wanted = min(wanted, total) if total >= 2 else 1
    step = (total - 1) / max(1, wanted - 1)
    indices = sorted({round(i * step) for i in range(wanted)})
    return VideoClip(frames=[to_rgb(decoded[i]) for i in indices], fps=rate, frame_indices=indices)


class MediaResolver:
    """Fetches and decodes every media reference of a request concurrently."""

    def __init__(self, fetcher: MediaFetcher, limits: MediaLimits) -> None:
        self.fetcher = fetcher
        self.limits = limits

    async def _bytes(self, ref: MediaRef, expect: str) -> bytes:
        if is_fetchable(ref.source):
            return await self.fetcher.fetch(ref.source, ref.param)
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
