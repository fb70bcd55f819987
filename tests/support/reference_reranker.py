"""Test oracle: Qwen3-VL-Reranker's scoring re-derived from the official recipe, one pair per forward pass, on the
CPU in float32: the judge's chat (instruction, `<Query>:`, the query's parts, `\\n<Document>:`, the document's parts,
`NULL` for an empty side), qwen-vl-utils' `process_vision_info`, the processor with LEFT padding, the released
`Qwen3VLForConditionalGeneration`, and `sigmoid(logit[yes] - logit[no])` at the last position; an over-long pair's
encoded tokens cut as the official `truncate_tokens_optimized` (the last 5 kept, then every special token and the
first plain tokens within `max_length`). Nothing here is shared with the server's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from tests.support.reference_recipe import RefItem, content_parts, official_inputs

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def _cut(inputs: Any, max_length: int, special_ids: list[int]) -> Any:
    """One pair's encoded tokens as the official code cuts them."""
    ids = inputs["input_ids"][0].tolist()
    head = ids[:-5]
    if len(head) <= max_length:
        return inputs
    special = set(special_ids)
    budget = max_length - sum(1 for token in head if token in special)
    kept, plain = [], 0
    for position, token in enumerate(head):
        if token in special:
            kept.append(position)
        elif plain < budget:
            kept.append(position)
            plain += 1
    kept += range(len(head), len(ids))
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in inputs:
            inputs[key] = inputs[key][:, kept]
    return inputs


def reference_rerank(
    model_dir: str | Path,
    query: RefItem,
    documents: list[RefItem],
    instruction: str | None = None,
    max_length: int = 10240,
) -> np.ndarray:
    processor: Any = AutoProcessor.from_pretrained(str(model_dir), padding_side="left")
    model: Any = Qwen3VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    yes = processor.tokenizer.convert_tokens_to_ids("yes")
    no = processor.tokenizer.convert_tokens_to_ids("no")
    task = (instruction or DEFAULT_INSTRUCTION).strip()
    scores = []
    for document in documents:
        content = [{"type": "text", "text": f"<Instruct>: {task}"}, {"type": "text", "text": "<Query>:"}]
        content += [*content_parts(query), {"type": "text", "text": "\n<Document>:"}, *content_parts(document)]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": content},
        ]
        inputs = _cut(official_inputs(processor, conversation), max_length, processor.tokenizer.all_special_ids)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        scores.append(torch.sigmoid(logits[yes] - logits[no]).item())
    return np.array(scores, dtype=np.float32)
