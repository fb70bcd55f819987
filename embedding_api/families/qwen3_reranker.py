"""Qwen3-Reranker (0.6B / 4B / 8B, text): the model card's scoring on a Qwen3 causal LM.

A pair is `<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}` between the card's fixed prefix
(the judge's system turn, then the user turn's start) and suffix (the turn's end and an empty thinking block); the
pair text is cut to what the prefix and suffix leave of the maximum length. The score is the softmax of the last
position's `no` and `yes` logits, which is `sigmoid(h . (lm_head[yes] - lm_head[no]))`. Pairs are batched (the card
pads a batch on the left; padding-free rows here give the same scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import PreparedItem
from embedding_api.families.text_embedders import TextEmbedderFamily, TextRecipe
from embedding_api.items import Item

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
MAX_LENGTH = 8192
RECIPE = TextRecipe(kind="qwen3_reranker", pooling="last")


class Qwen3RerankerFamily(TextEmbedderFamily):
    """The text embedder's machinery (padding-free batches, last token) with the card's pair text and score."""

    task = "rerank"

    def __init__(self, model: Any, tokenizer: Any, score_weight: torch.Tensor, **options: Any) -> None:
        options.setdefault("max_length", MAX_LENGTH)
        super().__init__(model, tokenizer, RECIPE, **options)
        self.kind = RECIPE.kind
        self.takes_instructions = True
        self.default_instruction = self.default_instruction or DEFAULT_INSTRUCTION
        self.score_weight = score_weight.detach().float().cpu().numpy()
        self._prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
        self._suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)

    def prepare(self, item: Item) -> PreparedItem:
        """`item` is the query; `item.document` the document scored against it."""
        document = item.document
        if document is None:
            raise ApiError(ErrorKind.INVALID_REQUEST, "a reranker scores query-document pairs, not single inputs")
        if item.images or item.videos or document.images or document.videos:
            raise ApiError(ErrorKind.UNSUPPORTED_INPUT, f"this model ({self.kind}) takes text only")
        item.check_wanted()
        instruction = item.instruction or self.default_instruction
        pair = f"<Instruct>: {instruction}\n<Query>: {' '.join(item.texts)}\n<Document>: {' '.join(document.texts)}"
        room = self.max_length - len(self._prefix) - len(self._suffix)
        with self._tokenizer_lock:
            ids: list[int] = self.tokenizer(pair[: room * 64], add_special_tokens=False)["input_ids"]
        if len(ids) > room:
            if not item.truncate:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"the pair is {len(ids) + len(self._prefix) + len(self._suffix)} tokens, above the reranker's "
                    f"{self.max_length}, and truncate is false",
                    code="input_too_long",
                )
            ids = ids[:room]  # as the card: the pair's tokens cut, the prefix and suffix kept whole
        tokens = self._prefix + ids + self._suffix
        return PreparedItem(payload=tokens, tokens=len(tokens), modalities=("text",))

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """softmax([no, yes])[yes] at each pair's last token."""
        logits = pooled.astype(np.float32) @ self.score_weight
        scores: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return scores.astype(np.float32)
