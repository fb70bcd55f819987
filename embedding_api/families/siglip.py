"""SigLIP and SigLIP2 dual encoders: an image through the vision tower and its pooling head, a text through the
text tower, each L2-normalised, as the model cards use them (`get_image_features` / `get_text_features` with the
checkpoint's processor; texts padded to the processor's `max_length`, 64, because the models were trained so).

One input is one image or one text: the towers are separate, so a fused text+image input has no meaning here.
FixRes `siglip` checkpoints resize every image to the processor's square size; NaFlex `siglip2` checkpoints cut it
into at most `max_num_patches` patches at its own aspect ratio (the processor's rule, applied per image).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families import cpu_linear
from embedding_api.families.base import Batch, FramePicker, PreparedItem, finish_vectors
from embedding_api.families.frames import QwenFramePicker
from embedding_api.items import Item

TEXT_LENGTH = 64  # the model cards' padding="max_length", max_length=64


class SiglipFamily:
    """The adapter: prepare (processor, per item) on CPU, run on the device, finish on the host."""

    modalities = frozenset({"text", "image"})
    task = "embed"
    packs_sequences = False
    takes_instructions = False
    matryoshka = False

    def __init__(self, model: Any, processor: Any, *, device: torch.device, text_length: int = TEXT_LENGTH) -> None:
        self.model = model
        self.processor = processor
        self.kind = str(model.config.model_type)  # siglip or siglip2
        self.torch_device = device
        self.device = str(device)
        self.model_dtype: torch.dtype = next(model.parameters()).dtype
        self.dtype = str(self.model_dtype).removeprefix("torch.")
        self.dimension = int(model.config.vision_config.hidden_size)
        self.text_length = text_length
        self.frame_picker: FramePicker = QwenFramePicker()  # never used: no video reaches this family
        cpu_linear.pack_linears(model)

    # ---- prepare (CPU, per item) -------------------------------------------------------------------------

    def prepare(self, item: Item) -> PreparedItem:
        item.check_wanted()
        if item.videos:
            raise ApiError(ErrorKind.UNSUPPORTED_INPUT, f"this model ({self.kind}) takes no video")
        if len(item.texts) + len(item.images) != 1:
            raise ApiError(
                ErrorKind.UNSUPPORTED_INPUT,
                f"this model ({self.kind}) takes one text or one image per input, not a fused input",
            )
        if item.images:
            image = item.images[0]
            pixels = self.processor(images=[image], return_tensors="pt")  # the processor's own defaults, as the card
            tensors = {key: value for key, value in pixels.items() if isinstance(value, torch.Tensor)}
            return PreparedItem(
                payload=("image", tensors),
                tokens=int(tensors["pixel_values"].shape[1]) if self.kind == "siglip2" else 1,
                pixels=image.width * image.height,
                modalities=("image",),
            )
        encoded = self.processor(
            text=[item.texts[0]],
            padding="max_length",
            truncation=True,
            max_length=self.text_length,
            return_tensors="pt",
        )
        # whatever the processor returns (input_ids, and attention_mask where its tokenizer makes one) goes to the
        # model, as the cards call `get_text_features(**inputs)`
        tensors = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        return PreparedItem(payload=("text", tensors), tokens=self.text_length, modalities=("text",))

    # ---- collate (CPU, per batch) ------------------------------------------------------------------------

    def collate(self, items: list[PreparedItem]) -> Batch:
        image_rows = [row for row, item in enumerate(items) if item.payload[0] == "image"]
        text_rows = [row for row, item in enumerate(items) if item.payload[0] == "text"]
        tensors: dict[str, Any] = {"image_rows": image_rows, "text_rows": text_rows}
        if image_rows:
            parts = [items[row].payload[1] for row in image_rows]
            tensors["images"] = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        if text_rows:
            parts = [items[row].payload[1] for row in text_rows]
            tensors["texts"] = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        return Batch(tensors=tensors, token_counts=[item.tokens for item in items])

    # ---- run (device) ------------------------------------------------------------------------------------

    def run(self, batch: Batch) -> np.ndarray:
        device = self.torch_device
        tensors = batch.tensors
        out = np.zeros((len(batch.token_counts), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            if tensors["image_rows"]:
                inputs = {
                    key: value.to(device, dtype=self.model_dtype if value.is_floating_point() else value.dtype)
                    for key, value in tensors["images"].items()
                }
                features = _features(self.model.get_image_features(**inputs))
                out[tensors["image_rows"]] = features.float().cpu().numpy()
            if tensors["text_rows"]:
                inputs = {key: value.to(device) for key, value in tensors["texts"].items()}
                features = _features(self.model.get_text_features(**inputs))
                out[tensors["text_rows"]] = features.float().cpu().numpy()
        return out

    # ---- finish (host) -----------------------------------------------------------------------------------

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return finish_vectors(pooled, dimensions, normalize)


def _features(output: Any) -> torch.Tensor:
    """transformers returns the pooled features as a tensor (4.x) or as an output's `pooler_output` (5.x)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled
