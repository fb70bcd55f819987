"""Qwen3-VL-Reranker: how well a document (any modality) answers a query (any modality), as the official
`Qwen3VLReranker` scores it.

One pair is one chat: the judge's system prompt, then a user turn holding `<Instruct>: {instruction}`, `<Query>:`, the
query's videos, images and texts, `\\n<Document>:`, and the document's (an empty side is the text `NULL`), with the
generation prompt. The score is `sigmoid(h . (lm_head[yes] - lm_head[no]))` at the pair's last token: P(yes) over the
two answers. Pairs are batched like embedding inputs (the official code runs one pair per forward pass); the
vision rules, padding-free batches and kernels are the embedder's.

An over-long pair is cut as the official code cuts its encoded tokens: the last five (the turn's end and the
generation prompt) and every special token (vision placeholders included) stay, and of the other tokens only the
first that fit MAX_LENGTH do, so the document loses its end first.
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
TAIL_TOKENS = 5  # `<|im_end|>`, `\n`, `<|im_start|>`, `assistant`, `\n`: never cut, and not counted in MAX_LENGTH
# A text longer than this many characters per allowed token is cut there before tokenising: the tokens the official
# cut keeps all lie well before that point (no token spans 64 characters), so the result is the same.
_MAX_CHARS_PER_TOKEN = 64
_DOCUMENT_MARKER = "\n<Document>:"
_VISION_START = "<|vision_start|>"

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
        self._special_ids = torch.tensor(sorted(self.tokenizer.all_special_ids))  # what the official cut keeps

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
        chars = (self.max_length + 64) * _MAX_CHARS_PER_TOKEN  # bounds tokenizer work; see _MAX_CHARS_PER_TOKEN
        texts = [[text[:chars] for text in side.texts] for side in (item, document)]
        prompt, tokens, ids = self._pair_prompt(instruction, texts, sides)
        cut = tokens - TAIL_TOKENS > self.max_length
        if cut:
            if not item.truncate:
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    f"the pair is {tokens} tokens, above the reranker's {self.max_length} (plus the {TAIL_TOKENS} of "
                    "its template's end), and truncate is false",
                    code="input_too_long",
                )
            # what the cut can leave at most: MAX_LENGTH, the tail, and every visual placeholder (all special)
            tokens = min(tokens, self.max_length + TAIL_TOKENS + self._visual_count(sides))
        images = sides[0][0] + sides[1][0]
        videos = sides[0][1] + sides[1][1]
        prepared = self._prepared(prompt, tokens, images, videos, item.modalities, None if cut else ids)
        prepared.payload.cut_to = self.max_length if cut else None
        return prepared

    def _shared_prefix(self, prompt: str) -> str:
        """Everything before the document: the judge's prompt, the instruction and the query (up to its first
        image or video, where sharing stops)."""
        ends = [prompt.find(marker) for marker in (_DOCUMENT_MARKER, _VISION_START)]
        end = min((index for index in ends if index >= 0), default=-1)
        return prompt[:end] if end > 0 else ""

    def _visuals(self, side: Item, owner: Item) -> Visuals:
        images = [self._resize_image(image) for image in side.images]
        videos = [self._prepare_video(clip, owner) for clip in side.videos]
        return images, videos

    def _pair_prompt(
        self, instruction: str, texts: list[list[str]], sides: list[Visuals]
    ) -> tuple[str, int, np.ndarray | None]:
        content: list[dict[str, str]] = [
            {"type": "text", "text": f"<Instruct>: {instruction}"},
            {"type": "text", "text": "<Query>:"},
        ]
        for index, ((images, videos), side_texts) in enumerate(zip(sides, texts, strict=True)):
            if index == 1:
                content.append({"type": "text", "text": _DOCUMENT_MARKER})
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
        return prompt, *self._tokenize_rendered(prompt, images, videos)

    def _visual_count(self, sides: list[Visuals]) -> int:
        images = sides[0][0] + sides[1][0]
        videos = sides[0][1] + sides[1][1]
        return self._count_rendered("", images, videos) + len(images) + len(videos)

    def _encoded(self, tensors: dict[str, torch.Tensor], prompts: list[Any]) -> dict[str, torch.Tensor]:
        """Over-long pairs' encoded tokens cut as the official code cuts them (rows right-padded again)."""
        if all(prompt.cut_to is None for prompt in prompts):
            return tensors
        mask = tensors["attention_mask"].bool()
        rows = [torch.arange(mask.shape[1])[row_mask] for row_mask in mask]  # each row's real positions
        for index, prompt in enumerate(prompts):
            if prompt.cut_to is not None:
                ids = tensors["input_ids"][index, rows[index]]
                rows[index] = rows[index][official_cut(ids, prompt.cut_to, self._special_ids)]
        width = max(len(row) for row in rows)
        cut: dict[str, torch.Tensor] = {}
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in tensors:
                fill = self.tokenizer.pad_token_id if key == "input_ids" else 0
                cut[key] = torch.full((len(rows), width), fill, dtype=tensors[key].dtype)
                for index, row in enumerate(rows):
                    cut[key][index, : len(row)] = tensors[key][index, row]
        return {**tensors, **cut}

    # ---- finish (host) -----------------------------------------------------------------------------------

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """P(yes) over the two answers at each pair's last token."""
        logits = pooled.astype(np.float32) @ self.score_weight
        scores: np.ndarray = 1.0 / (1.0 + np.exp(-logits))
        return scores.astype(np.float32)


def official_cut(ids: torch.Tensor, max_length: int, special_ids: torch.Tensor) -> torch.Tensor:
    """Which of one pair's encoded tokens the official code keeps: the last TAIL_TOKENS, every special token, and
    the first other tokens while the kept ones before the tail stay within `max_length`."""
    head = len(ids) - TAIL_TOKENS
    if head <= max_length:
        return torch.ones(len(ids), dtype=torch.bool)
    special = torch.isin(ids[:head], special_ids)
    room = max_length - int(special.sum())
    plain_rank = torch.cumsum(~special, dim=0)  # 1 for the first plain token, 2 for the second, ...
    return torch.cat([special | (plain_rank <= room), torch.ones(TAIL_TOKENS, dtype=torch.bool)])


def score_weight(lm_head: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """`lm_head[yes] - lm_head[no]`: the one row of the head a yes/no judgement needs."""
    ids = [tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no")]
    if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the reranker's tokenizer has no single `yes` and `no` tokens")
    weight: torch.Tensor = lm_head[ids[0]] - lm_head[ids[1]]
    return weight
