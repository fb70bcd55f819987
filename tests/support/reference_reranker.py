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
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from tests.support.reference_recipe import RefItem, content_parts, official_inputs

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


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
        content += [*content_parts(query), {"type": "text", "text": "\n<Document>:"}, *content_parts(document)]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": content},
        ]
        inputs = official_inputs(processor, conversation)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        scores.append(torch.sigmoid(logits[yes] - logits[no]).item())
    return np.array(scores, dtype=np.float32)
