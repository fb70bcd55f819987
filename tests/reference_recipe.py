"""Test oracle: a plain, one-item-at-a-time implementation of docs/model-recipe.md.

Written directly from the recipe (not from the server code) so that tests can compare the
server's vectors with an independent computation: same conversation format, same image and
frame resizing, same processor call, last-token pooling and (Matryoshka) normalisation.
Everything runs in float32 on the CPU.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf
from transformers import AutoModel, AutoProcessor
from transformers.video_utils import VideoMetadata

DEFAULT_INSTRUCTION = "Represent the user's input."

FACTOR = 32  # patch 16 x spatial merge 2
IMAGE_MIN_PIXELS = 4 * 32 * 32
IMAGE_MAX_PIXELS = 1800 * 32 * 32
VIDEO_FRAME_MIN_PIXELS = 128 * 32 * 32
VIDEO_FRAME_MAX_PIXELS = 768 * 32 * 32
VIDEO_TOTAL_PIXELS = 10 * 768 * 32 * 32
MAX_FRAMES = 64
VIDEO_FPS = 1.0
MAX_LENGTH = 8192


@dataclass
class RefItem:
    """One input: any mix of texts, images and videos (a video is a list of frames)."""

    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)
    instruction: str | None = None  # None -> DEFAULT_INSTRUCTION


def system_prompt(instruction: str | None) -> str:
    """The instruction, with a '.' appended when it does not end in punctuation."""
    if not instruction:
        return DEFAULT_INSTRUCTION
    if not unicodedata.category(instruction[-1]).startswith("P"):
        return instruction + "."
    return instruction


def build_conversation(item: RefItem) -> list[dict[str, Any]]:
    """System message with the instruction; user message with videos, images, then texts."""
    content: list[dict[str, Any]] = []
    for video in item.videos:
        content.append({"type": "video", "video": video})
    for image in item.images:
        content.append({"type": "image", "image": image})
    for text in item.texts:
        content.append({"type": "text", "text": text})
    if not content:
        content.append({"type": "text", "text": "NULL"})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(item.instruction)}]},
        {"role": "user", "content": content},
    ]


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of ``image``; transparent RGBA pixels become white."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def smart_resize(height: int, width: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """Target (height, width): multiples of 32, pixel count within the bounds, aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio must be at most 200")
    new_height = max(FACTOR, round(height / FACTOR) * FACTOR)
    new_width = max(FACTOR, round(width / FACTOR) * FACTOR)
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        new_width = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / FACTOR) * FACTOR
        new_width = math.ceil(width * beta / FACTOR) * FACTOR
    return new_height, new_width


def prepare_image(image: Image.Image) -> Image.Image:
    """RGB, resized with bicubic to the smart-resize size for images."""
    image = to_rgb(image)
    height, width = smart_resize(image.height, image.width, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    return image.resize((width, height), resample=Image.Resampling.BICUBIC)


def prepare_video(frames: list[Image.Image]) -> torch.Tensor:
    """Frames -> float tensor (T, C, H, W): subsampled to <= 64, even count, resized."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    if len(frames) > MAX_FRAMES:
        picks = np.linspace(0, len(frames) - 1, MAX_FRAMES).round().astype(int)
        frames = [frames[int(i)] for i in picks]
    if len(frames) % 2:
        frames = [*frames, frames[-1]]
    arrays = [np.asarray(to_rgb(frame)) for frame in frames]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("all frames of a video must have the same size")
    video = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # uint8 TCHW

    n_frames = video.shape[0]
    max_pixels = max(
        min(VIDEO_FRAME_MAX_PIXELS, VIDEO_TOTAL_PIXELS / n_frames * 2),
        int(VIDEO_FRAME_MIN_PIXELS * 1.05),
    )
    height, width = smart_resize(video.shape[2], video.shape[3], VIDEO_FRAME_MIN_PIXELS, max_pixels)
    resized = tvf.resize(
        video,
        [height, width],
        interpolation=tvf.InterpolationMode.BICUBIC,
        antialias=True,
    )
    return resized.float()


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last position whose attention mask is 1, per row."""
    rows = []
    for row in range(hidden.shape[0]):
        last = int(torch.nonzero(attention_mask[row]).max())
        rows.append(hidden[row, last])
    return torch.stack(rows)


def reference_embed(
    model_dir: str | Path,
    items: list[RefItem],
    dimensions: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Embed ``items`` one by one, as the recipe says; returns (n, d) float32."""
    processor: Any = AutoProcessor.from_pretrained(str(model_dir))
    model: Any = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()

    vectors: list[torch.Tensor] = []
    for item in items:
        prompt = processor.apply_chat_template(build_conversation(item), add_generation_prompt=True, tokenize=False)
        videos = [prepare_video(frames) for frames in item.videos]
        images = [prepare_image(image) for image in item.images]
        metadata = [
            VideoMetadata(
                total_num_frames=video.shape[0],
                fps=VIDEO_FPS,
                frames_indices=list(range(video.shape[0])),
            )
            for video in videos
        ]
        inputs = processor(
            text=[prompt],
            images=images or None,
            videos=videos or None,
            video_metadata=metadata or None,
            do_sample_frames=False,
            do_resize=False,
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        with torch.no_grad():
            output = model(**inputs)
        pooled = last_token_pool(output.last_hidden_state, inputs["attention_mask"])[0]
        vectors.append(pooled.float())

    hidden_size = int(model.config.text_config.hidden_size)
    result = torch.stack(vectors) if vectors else torch.zeros((0, hidden_size))
    if normalize:
        result = torch.nn.functional.normalize(result, p=2, dim=-1)
    if dimensions is not None:
        if not 0 < dimensions <= result.shape[-1]:
            raise ValueError(f"dimensions must be in 1..{result.shape[-1]}")
        result = result[:, :dimensions]
        if normalize:
            result = torch.nn.functional.normalize(result, p=2, dim=-1)
    array: np.ndarray = result.numpy().astype(np.float32)
    return array
