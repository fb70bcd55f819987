"""Qwen3-VL-Reranker: how well a document (any modality) answers a query (any modality), as the official
`Qwen3VLReranker` scores it.

One pair is one chat: the judge's system prompt, then a user turn holding `<Instruct>: {instruction}`, `<Query>:`, the
query's videos, images and texts, `\\n<Document>:`, and the document's (an empty side is the text `NULL`), with the
generation prompt. The score is `sigmoid(h . (lm_head[yes] - lm_head[no]))` at the pair's last token: P(yes) over the
two answers. Pairs are batched like embedding inputs (the official code runs one pair per forward pass); the
vision rules, padding-free batches and kernels are the embedder's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import PreparedItem
from embedding_api.families.qwen3_vl import EMPTY_ITEM_TEXT, Qwen3VLFamily
from embedding_api.items import Item

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MAX_LENGTH = 10240
_CUT_ROUNDS = 8
_CUT_SLACK = 8

Visuals = tuple[list[Image.Image], list[tuple[torch.Tensor, dict[str, Any]]]]


class Qwen3VLRerankerFamily(Qwen3VLFamily):
    """The embedder's machinery with the reranker's prompt and score head."""

    kind = "qwen3_vl_reranker"
    task = "rerank"
    matryoshka = False

    def __init__(self, model: Any, processor: Any, score_weight: torch.Tensor, **options: Any) -> None:
        options.setdefault("default_instruction", DEFAULT_INSTRUCTION)
        options.setdefault("max_length", MAX_LENGTH)
        super().__init__(model, processor, **options)
        self.score_weight = score_weight.detach().float().cpu().numpy()

    # ---- prepare (CPU, per pair) -------------------------------------------------------------------------

    def prepare(self, item: Item) -> PreparedItem:
        """`item` is the query; `item.document` the document scored against it."""
        document = item.document
        if document is None:
            raise ApiError(ErrorKind.INVALID_REQUEST, "a reranker scores query-document pairs, not single inputs")
        item.check_wanted()
        sides = [self._visuals(side, item) for side in (item, document)]
        item.check_wanted()
        # the recipe: stripped, blank means the default; unlike the embedder's, no full stop is added
        instruction = (item.instruction or "").strip() or self.default_instruction
        texts = [list(item.texts), list(document.texts)]
        prompt, tokens = self._pair_prompt(instruction, texts, sides)
        if tokens > self.max_length:
            if not item.truncate:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"the pair is {tokens} tokens, above the reranker's {self.max_length}, and truncate is false",
                    code="input_too_long",
                )
            prompt, tokens = self._cut_document(instruction, texts, sides, tokens)
        images = sides[0][0] + sides[1][0]
        videos = sides[0][1] + sides[1][1]
        return self._prepared(prompt, tokens, images, videos, item.modalities)

    def _visuals(self, side: Item, owner: Item) -> Visuals:
        images = [self._resize_image(image) for image in side.images]
        videos = [self._prepare_video(clip, owner) for clip in side.videos]
        return images, videos

    def _pair_prompt(self, instruction: str, texts: list[list[str]], sides: list[Visuals]) -> tuple[str, int]:
        content: list[dict[str, str]] = [
            {"type": "text", "text": f"<Instruct>: {instruction}"},
            {"type": "text", "text": "<Query>:"},
        ]
        for index, ((images, videos), side_texts) in enumerate(zip(sides, texts, strict=True)):
            if index == 1:
                content.append({"type": "text", "text": "\n<Document>:"})
            parts = [{"type": "video"} for _ in videos] + [{"type": "image"} for _ in images]
            parts += [{"type": "text", "text": text} for text in side_texts]
            content += parts or [{"type": "text", "text": EMPTY_ITEM_TEXT}]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": content},
        ]
        prompt = str(self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
        images = sides[0][0] + sides[1][0]
        videos = sides[0][1] + sides[1][1]
        return prompt, self._count_rendered(prompt, images, videos)

    def _cut_document(
        self, instruction: str, texts: list[list[str]], sides: list[Visuals], tokens: int
    ) -> tuple[str, int]:
        """Cut the document's texts from their end (then the query's) until the pair fits; the template's tail,
        where the score is read, always stays."""
        texts = [list(side) for side in texts]
        prompt = ""
        for _ in range(_CUT_ROUNDS):
            overflow = tokens - self.max_length + _CUT_SLACK
            for side in (texts[1], texts[0]):
                overflow = self._cut_from_end(side, overflow)
            texts = [[text for text in side if text] for side in texts]
            prompt, tokens = self._pair_prompt(instruction, texts, sides)
            if tokens <= self.max_length:
                return prompt, tokens
        raise ApiError(
            ErrorKind.ITEM_TOO_LARGE,
            f"the pair still needs {tokens} tokens with its texts cut, above the reranker's {self.max_length}; send "
            "smaller or fewer images or video frames",
        )

    # ---- finish (host) -----------------------------------------------------------------------------------

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """P(yes) over the two answers at each pair's last token."""
        logits = pooled.astype(np.float32) @ self.score_weight
        scores: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return scores.astype(np.float32)


def score_weight(lm_head: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """`lm_head[yes] - lm_head[no]`: the one row of the head a yes/no judgement needs."""
    ids = [tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no")]
    if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the reranker's tokenizer has no single `yes` and `no` tokens")
    weight: torch.Tensor = lm_head[ids[0]] - lm_head[ids[1]]
    return weight
