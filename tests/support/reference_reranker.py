"""Test oracle: Qwen3-VL-Reranker's scoring re-derived from the official recipe, one pair per forward pass, on the
CPU in float32: the judge's chat (instruction, `<Query>:`, the query's parts, `\\n<Document>:`, the document's parts,
`NULL` for an empty side), qwen-vl-utils' `process_vision_info`, the processor with LEFT padding, the released
`Qwen3VLForConditionalGeneration`, and `sigmoid(logit[yes] - logit[no])` at the last position. Nothing here is
shared with the server's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from qwen_vl_utils import process_vision_info
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from tests.support.reference_recipe import FPS, MAX_FRAMES, MAX_PIXELS, MIN_PIXELS, TOTAL_PIXELS, RefItem, _frame_pick

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def _parts(item: RefItem) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for video in item.videos:
        if isinstance(video, str):
            parts.append({"type": "video", "video": "file://" + video, "fps": FPS, "max_frames": MAX_FRAMES})
        else:
            parts.append({"type": "video", "video": _frame_pick(video), "total_pixels": TOTAL_PIXELS})
    for image in item.images:
        source = "file://" + image if isinstance(image, str) else image
        parts.append({"type": "image", "image": source, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
    parts += [{"type": "text", "text": text} for text in item.texts]
    return parts or [{"type": "text", "text": "NULL"}]


def reference_rerank(
    model_dir: str | Path, query: RefItem, documents: list[RefItem], instruction: str | None = None
) -> np.ndarray:
    processor: Any = AutoProcessor.from_pretrained(str(model_dir), padding_side="left")
    model: Any = Qwen3VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    no = processor.tokenizer.convert_tokens_to_ids("no")
    task = (instruction or DEFAULT_INSTRUCTION).strip()
    scores = []
    for document in documents:
        content = [{"type": "text", "text": f"<Instruct>: {task}"}, {"type": "text", "text": "<Query>:"}]
        content += [*_parts(query), {"type": "text", "text": "\n<Document>:"}, *_parts(document)]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": content},
        ]
        text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
        images, video_inputs, video_kwargs = process_vision_info(
            [conversation], image_patch_size=16, return_video_metadata=True, return_video_kwargs=True
        )
        videos, metadata = (list(x) for x in zip(*video_inputs, strict=True)) if video_inputs else (None, None)
        inputs = processor(
            text=text,
            images=images,
            videos=videos,
            video_metadata=metadata,
            padding=True,
            do_resize=False,
            return_tensors="pt",
            **video_kwargs,
        )
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        scores.append(torch.sigmoid(logits[yes] - logits[no]).item())
    return np.array(scores, dtype=np.float32)
