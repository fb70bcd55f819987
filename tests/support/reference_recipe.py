"""Test oracle: the official Qwen3-VL-Embedding preprocessing path, one item at a time, on the CPU in float32.

It follows the official embedder (QwenLM/Qwen3-VL-Embedding, `Qwen3VLEmbedder`): the same conversation, built the
way its `format_model_input` builds it (instruction stripped, blank = default, full stop appended; videos as frame
lists with `total_pixels`, video files with `fps=1, max_frames=64`, images with min/max pixels), then qwen-vl-utils'
own `process_vision_info(..., image_patch_size=16, return_video_metadata=True, return_video_kwargs=True)` and the
processor called with its arguments. Nothing here is shared with the server's code.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils import process_vision_info
from transformers import AutoModel, AutoProcessor

DEFAULT_INSTRUCTION = "Represent the user's input."
MAX_LENGTH = 8192
MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32
TOTAL_PIXELS = 10 * 768 * 32 * 32
FPS = 1
MAX_FRAMES = 64


@dataclass
class RefItem:
    """One input: texts, images (PIL images or file paths), videos (a list of frames, or a video file's path)."""

    texts: list[str] = field(default_factory=list)
    images: list[Image.Image | str] = field(default_factory=list)
    videos: list[list[Image.Image] | str] = field(default_factory=list)
    instruction: str | None = None


def system_prompt(instruction: str | None) -> str:
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    return instruction or DEFAULT_INSTRUCTION


def _frame_pick(frames: list[Image.Image]) -> list[Image.Image]:
    if len(frames) <= MAX_FRAMES:
        return frames
    return [frames[i] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES, dtype=int).tolist()]


def content_parts(item: RefItem) -> list[dict[str, Any]]:
    """Videos, images, then texts, as the official code lists them (the text NULL for an empty item)."""
    content: list[dict[str, Any]] = []
    for video in item.videos:
        if isinstance(video, str):
            content.append({"type": "video", "video": "file://" + video, "fps": FPS, "max_frames": MAX_FRAMES})
        else:
            content.append({"type": "video", "video": _frame_pick(video), "total_pixels": TOTAL_PIXELS})
    for image in item.images:
        source = "file://" + image if isinstance(image, str) else image
        content.append({"type": "image", "image": source, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
    for text in item.texts:
        content.append({"type": "text", "text": text})
    return content or [{"type": "text", "text": "NULL"}]


def build_conversation(item: RefItem) -> list[dict[str, Any]]:
    """System message with the instruction; user message with the item's parts."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(item.instruction)}]},
        {"role": "user", "content": content_parts(item)},
    ]


def official_inputs(processor: Any, conversation: list[dict[str, Any]], **options: Any) -> Any:
    """The chat template, qwen-vl-utils' `process_vision_info` and the processor, called as the official code."""
    text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
    images, video_inputs, video_kwargs = process_vision_info(
        [conversation], image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
    )
    videos, metadata = (list(x) for x in zip(*video_inputs, strict=True)) if video_inputs else (None, None)
    return processor(
        text=text,
        images=images,
        videos=videos,
        video_metadata=metadata,
        padding=True,
        do_resize=False,
        return_tensors="pt",
        **video_kwargs,
        **options,
    )


def reference_embed(
    model_dir: str | Path,
    items: list[RefItem],
    dimensions: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Embed ``items`` one by one, as the official embedder does; returns (n, d) float32."""
    processor: Any = AutoProcessor.from_pretrained(str(model_dir), padding_side="right")
    model: Any = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()

    vectors: list[torch.Tensor] = []
    for item in items:
        inputs = official_inputs(processor, build_conversation(item), truncation=True, max_length=MAX_LENGTH)
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"]
        last = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
        vectors.append(hidden[torch.arange(hidden.shape[0]), last][0].float())

    hidden_size = int(model.config.text_config.hidden_size)
    result = torch.stack(vectors) if vectors else torch.zeros((0, hidden_size))
    if normalize:
        result = torch.nn.functional.normalize(result, p=2, dim=-1)
    if dimensions is not None:
        result = result[:, :dimensions]
        if normalize:
            result = torch.nn.functional.normalize(result, p=2, dim=-1)
    array: np.ndarray = result.numpy().astype(np.float32)
    return array
