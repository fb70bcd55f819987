"""Qwen's image and frame sizing, through qwen-vl-utils (the library the official embedder preprocesses with).

Our own code fetches and decodes (with limits); qwen-vl-utils does the pixel arithmetic on the decoded images,
so sizes, resampling and frame handling stay equal to the official embedder's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from embedding_api.errors import ApiError, ErrorKind

FRAME_FACTOR = qvu.FRAME_FACTOR  # the video encoder pairs frames in time
LIST_MAX_FRAMES = 64  # the official embedder's `max_frames` for frame lists
LIST_SAMPLE_FPS = 2.0  # qwen-vl-utils' default: the fps a frame list is said to have
LIST_TOTAL_PIXELS = 10 * qvu.VIDEO_MAX_TOKEN_NUM * 32 * 32  # the official embedder's total budget for frame lists


def _aspect_error(error: ValueError) -> ApiError:
    return ApiError(ErrorKind.MEDIA_DECODE, f"image cannot be resized: {error}")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of `factor`, area kept within [min_pixels, max_pixels], aspect ratio kept."""
    if min(height, width) < 1:
        raise ApiError(ErrorKind.MEDIA_DECODE, "image has an empty side")
    try:
        size = qvu.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return int(size[0]), int(size[1])
    except ValueError as error:
        raise _aspect_error(error) from None


def cap_size(width: int, height: int, max_side: int | None, max_width: int | None, max_height: int | None) -> float:
    """Scale factor (<= 1) that keeps the image within the optional operator caps."""
    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if max_width is not None:
        scale = min(scale, max_width / width)
    if max_height is not None:
        scale = min(scale, max_height / height)
    return scale


def fetch_image(image: Image.Image, patch_size: int, **bounds: int) -> Image.Image:
    """qwen-vl-utils' image path on an image we decoded: smart resize (factor = patch x merge), PIL bicubic."""
    if min(image.size) < 1:
        raise ApiError(ErrorKind.MEDIA_DECODE, "image has an empty side")
    try:
        resized: Image.Image = qvu.fetch_image({"image": image, **bounds}, image_patch_size=patch_size)
    except ValueError as error:
        raise _aspect_error(error) from None
    return resized


def frame_pixel_bounds(frame_count: int, factor: int, total_pixels: float | None) -> tuple[int, int]:
    """qwen-vl-utils' per-frame pixel range for `frame_count` frames sharing `total_pixels` (its default if None)."""
    min_pixels = qvu.VIDEO_MIN_TOKEN_NUM * factor * factor
    frame_max = qvu.VIDEO_MAX_TOKEN_NUM * factor * factor
    total = total_pixels if total_pixels is not None else qvu.MODEL_SEQ_LEN * factor * factor * 0.9
    max_pixels = max(min(frame_max, total / frame_count * FRAME_FACTOR), int(min_pixels * 1.05))
    return min_pixels, int(max_pixels)


def video_size(height: int, width: int, count: int, factor: int, total_pixels: float | None) -> tuple[int, int]:
    """Frame size of a video of `count` frames (padded to even) whose first frame is height x width."""
    return smart_resize(height, width, factor, *frame_pixel_bounds(even_count(count), factor, total_pixels))


def even_count(count: int) -> int:
    return int(-(-count // FRAME_FACTOR) * FRAME_FACTOR)


def padded_to_even(frames: Iterable[Any], count: int) -> Iterator[Any]:
    """The frames, then the last one repeated until the count is even."""
    last = None
    for last in frames:
        yield last
    for _ in range(even_count(count) - count):
        yield last


def resize_frames(
    frames: Iterable[Image.Image],
    count: int,
    factor: int,
    total_pixels: float | None,
    check: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """(T, C, H, W) uint8 stack of `count` frames (padded to an even count), one frame resized at a time.

    The size comes from the first frame and the frame count, as qwen-vl-utils computes it; every frame is resized
    with the same torchvision call it makes (float bicubic with antialias, back to uint8 values). Frames of another
    size than the first are resized to the same size (the official embedder fails on them).
    """
    padded = even_count(count)
    out: torch.Tensor | None = None
    size: list[int] = []
    written = 0
    for index, frame in enumerate(padded_to_even(frames, count)):
        check()  # between frames: a cancelled request stops here
        tensor = torch.from_numpy(np.array(frame.convert("RGB"))).permute(2, 0, 1)
        if out is None:
            size = list(video_size(tensor.shape[1], tensor.shape[2], count, factor, total_pixels))
            out = torch.empty((padded, 3, size[0], size[1]), dtype=torch.uint8)
        out[index] = tvf.resize(tensor, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        written = index + 1
    if out is None or written != padded:
        raise ApiError(ErrorKind.MEDIA_DECODE, f"video gave {written} of its {padded} frames")
    return out
