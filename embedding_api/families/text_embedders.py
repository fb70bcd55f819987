"""Text-only embedders on a decoder: Qwen3-Embedding, and any causal LM read at one of its hidden layers.

Both tokenise the text (with the tokenizer's own special tokens: Qwen3-Embedding's appends its end-of-text token),
run the model, pool one layer and L2-normalise:
- Qwen3-Embedding (the model card's sentence-transformers usage): a query with an instruction is written
  `Instruct: {instruction}\\nQuery:{text}`, a document as it is; the last token of the final (normed) layer;
  Matryoshka `dimensions`.
- a hidden-state embedder (the older image/text pair reused a causal LM this way): the text as it is, the mean over
  real tokens (or the last token) of `hidden_states[layer]`, layer -2 by default; no instruction, no `dimensions`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families import cpu_fusion, cpu_kernels, cpu_linear, packing, pooled_rows
from embedding_api.families.base import Batch, FramePicker, PreparedItem, finish_vectors
from embedding_api.families.frames import QwenFramePicker
from embedding_api.items import Item

Pooling = Literal["mean", "last"]
QWEN3_QUERY_FORMAT = "Instruct: {instruction}\nQuery:{text}"


@dataclass(frozen=True)
class TextRecipe:
    """What distinguishes one text embedder from another."""

    kind: str  # the family's name in /v1/models
    pooling: Pooling = "last"
    layer: int | None = None  # None: the model's final output (after its last norm); else `hidden_states[layer]`
    query_format: str | None = None  # with an instruction; None: instructions are not part of this model
    matryoshka: bool = False  # trained so that leading dimensions stand alone (`dimensions` allowed)


QWEN3_EMBEDDING = TextRecipe(kind="qwen3_embedding", pooling="last", query_format=QWEN3_QUERY_FORMAT, matryoshka=True)


def hidden_state_recipe(layer: int = -2, pooling: Pooling = "mean") -> TextRecipe:
    return TextRecipe(kind="hidden_state", pooling=pooling, layer=layer)


class TextEmbedderFamily:
    """The adapter: prepare (tokenise) on CPU, run on the device, finish on the host."""

    modalities = frozenset({"text", "fused"})  # several text parts are read as one text
    task = "embed"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        recipe: TextRecipe,
        *,
        device: torch.device,
        max_length: int,
        default_instruction: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.recipe = recipe
        self.kind = recipe.kind
        self.takes_instructions = recipe.query_format is not None
        self.matryoshka = recipe.matryoshka
        self.torch_device = device
        self.device = str(device)
        self.model_dtype: torch.dtype = next(model.parameters()).dtype
        self.dtype = str(self.model_dtype).removeprefix("torch.")
        config = getattr(model.config, "text_config", model.config)
        self.dimension = int(config.hidden_size)
        self.max_length = max_length
        self.default_instruction = default_instruction
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.frame_picker: FramePicker = QwenFramePicker()  # never used: no video reaches a text model
        self._tokenizer_lock = threading.Lock()  # the fast tokenizer's truncation state is per object
        # Padding-free batches where the model runs with the packed attention (the CPU), padded rows otherwise.
        self.packs_sequences = getattr(model.config, "_attn_implementation", None) == packing.ATTENTION
        # Pooling the final layer's last token: that layer's MLP is needed for the pooled rows only.
        self._pooled_rows_only = recipe.layer is None and recipe.pooling == "last" and hasattr(model, "layers")
        if self._pooled_rows_only:
            pooled_rows.wrap_last_layer(model.layers)
        cpu_linear.pack_linears(model)
        cpu_fusion.fuse(model, cpu_kernels.active())

    # ---- prepare (CPU, per item) -------------------------------------------------------------------------

    def text_of(self, item: Item) -> str:
        """The string the model reads: the item's texts joined by a space, written as a query when instructed."""
        text = " ".join(item.texts)
        instruction = item.instruction or self.default_instruction
        if instruction and self.recipe.query_format is not None:
            return self.recipe.query_format.format(instruction=instruction.strip(), text=text)
        return text

    def prepare(self, item: Item) -> PreparedItem:
        item.check_wanted()
        if item.images or item.videos:
            raise ApiError(ErrorKind.UNSUPPORTED_INPUT, f"this model ({self.kind}) takes text only")
        text = self.text_of(item)[: self.max_length * 64]  # no token spans 64 characters: bounds tokenizer work
        with self._tokenizer_lock:
            ids: list[int] = self.tokenizer(text, truncation=False)["input_ids"]
            if len(ids) > self.max_length:
                if not item.truncate:
                    raise ApiError(
                        ErrorKind.INVALID_REQUEST,
                        f"input is {len(ids)} tokens, above MAX_LENGTH={self.max_length}, and truncate is false",
                        code="input_too_long",
                    )
                # cut as the tokenizer does (its special tokens, such as a trailing end-of-text, kept)
                ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return PreparedItem(payload=ids, tokens=len(ids), modalities=("text",))

    # ---- collate (CPU, per batch) ------------------------------------------------------------------------

    def collate(self, items: list[PreparedItem]) -> Batch:
        counts = [len(item.payload) for item in items]
        if self.packs_sequences:  # one row of the real tokens, each sequence with its own positions
            input_ids = torch.tensor([token for item in items for token in item.payload], dtype=torch.long)
            positions = torch.cat([torch.arange(count) for count in counts])
            if self.recipe.pooling == "last":  # a mean needs every token's own row: nothing shared then
                layout = packing.share_prefixes([item.payload for item in items])
                input_ids, positions, spans = input_ids[layout.keep], positions[layout.keep], layout.spans
            else:
                spans = packing.sequence_bounds(counts)
            tensors = {"input_ids": input_ids[None], "position_ids": positions[None]}
            return Batch(tensors=tensors, token_counts=counts, spans=spans)
        width = max(counts)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : counts[row]] = torch.tensor(item.payload, dtype=torch.long)
            mask[row, : counts[row]] = 1
        return Batch(tensors={"input_ids": input_ids, "attention_mask": mask}, token_counts=counts)

    # ---- run (device) ------------------------------------------------------------------------------------

    def run(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            if self.packs_sequences:
                return self._run_packed(batch)
            return self._run_padded(batch)

    def _forward(self, rows: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """The pooled layer for every token; `rows` (the flat pooled positions) spare the last MLP the others."""
        layer = self.recipe.layer
        context = pooled_rows.pooled_rows(rows) if self._pooled_rows_only else contextlib.nullcontext()
        with context:
            output = self.model(**inputs, output_hidden_states=layer is not None, use_cache=False)
        hidden: torch.Tensor = output.last_hidden_state if layer is None else output.hidden_states[layer]
        return hidden.float()

    def _run_packed(self, batch: Batch) -> np.ndarray:
        device = self.torch_device
        spans = batch.spans or packing.sequence_bounds(batch.token_counts)
        input_ids = batch.tensors["input_ids"].to(device)
        position_ids = batch.tensors["position_ids"].to(device)
        last = torch.tensor([span.end - 1 for span in spans], device=device)
        with packing.packed_sequences(spans, device):
            hidden = self._forward(last, input_ids=input_ids, position_ids=position_ids)[0]
        if self.recipe.pooling == "mean":  # nothing shared (collate): the spans cover the row in order
            pooled = torch.stack([hidden[span.start : span.end].mean(dim=0) for span in spans])
        else:
            pooled = hidden[last]
        host: np.ndarray = pooled.cpu().numpy()
        return host

    def _run_padded(self, batch: Batch) -> np.ndarray:
        device = self.torch_device
        input_ids = batch.tensors["input_ids"].to(device, non_blocking=True)
        mask = batch.tensors["attention_mask"].to(device, non_blocking=True)
        last = mask.sum(dim=1) - 1  # right padding: the last real token of each row
        rows = torch.arange(mask.shape[0], device=device) * mask.shape[1] + last
        hidden = self._forward(rows, input_ids=input_ids, attention_mask=mask)
        if self.recipe.pooling == "mean":
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        else:
            pooled = hidden.reshape(-1, hidden.shape[-1])[rows]
        host: np.ndarray = pooled.cpu().numpy()
        return host

    # ---- finish (host) -----------------------------------------------------------------------------------

    def finish(self, pooled: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
        return finish_vectors(pooled, dimensions, normalize)
