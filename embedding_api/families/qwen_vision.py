"""Qwen's image and frame sizing rules (the recipe's "smart resize"), as pure functions."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from embedding_api.errors import ApiError, ErrorKind

MAX_ASPECT_RATIO = 200
VIDEO_MIN_PIXELS = 128 * 32 * 32
VIDEO_MAX_PIXELS = 768 * 32 * 32
VIDEO_TOTAL_PIXELS = 10 * 768 * 32 * 32
VIDEO_MAX_FRAMES = 64
FRAME_FACTOR = 2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of `factor`, area kept within [min_pixels, max_pixels], aspect ratio kept."""
    if min(height, width) < 1:
        raise ApiError(ErrorKind.MEDIA_DECODE, "image has an empty side")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ApiError(
            ErrorKind.MEDIA_DECODE,
            f"image aspect ratio {max(height, width) / min(height, width):.0f}:1 is above {MAX_ASPECT_RATIO}:1",
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


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


def resize_to(image: Image.Image, height: int, width: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def pad_to_even(frames: list[Image.Image]) -> list[Image.Image]:
    """The video encoder pairs frames in time: repeat the last one when the count is odd."""
    if len(frames) % FRAME_FACTOR:
        return frames + [frames[-1]] * (FRAME_FACTOR - len(frames) % FRAME_FACTOR)
    return frames


def frame_pixel_bounds(frame_count: int) -> tuple[int, int]:
    """Per-frame pixel range for a video of `frame_count` frames, sharing the total budget."""
    upper = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / frame_count * FRAME_FACTOR), int(VIDEO_MIN_PIXELS * 1.05))
    return VIDEO_MIN_PIXELS, int(upper)


def resize_frames(frames: list[Image.Image], height: int, width: int) -> torch.Tensor:
    """Frames as one uint8 (T, C, H, W) tensor, each resized bicubic with antialiasing, as video pipelines do."""
    resized = []
    for frame in frames:
        tensor = torch.from_numpy(np.array(frame.convert("RGB"))).permute(2, 0, 1).contiguous()
        resized.append(tvf.resize(tensor, [height, width], interpolation=tvf.InterpolationMode.BICUBIC, antialias=True))
    return torch.stack(resized)
