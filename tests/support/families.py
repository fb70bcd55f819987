"""The other families' tiny checkpoints (the `family_dirs` fixture, built once per test session; loaded as a plugin by
`-p tests.support.families` in pyproject.toml) and their oracles: each model card's own usage, called as the card
calls it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.tiny_families import (
    QWEN3_QUERY_PROMPT,
    build_causal_lm,
    build_qwen3_embedding,
    build_qwen3_reranker,
    build_siglip,
    build_vl_reranker,
)


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        "qwen3_embedding": build_qwen3_embedding(root / "qwen3-embedding"),
        "causal_lm": build_causal_lm(root / "causal-lm"),
        "siglip": build_siglip(root / "siglip"),
        "siglip2": build_siglip(root / "siglip2", naflex=True),
        "vl_reranker": build_vl_reranker(root / "vl-reranker"),
        "qwen3_reranker": build_qwen3_reranker(root / "qwen3-reranker"),
    }


QWEN3_TASK = QWEN3_QUERY_PROMPT.removeprefix("Instruct: ").removesuffix("\nQuery:")


def sentence_transformers_vectors(path: Path, texts: list[str], *, query: bool) -> np.ndarray:
    """Qwen3-Embedding's model card: `model.encode(queries, prompt_name="query")`, documents without a prompt."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    vectors = model.encode(texts, prompt_name="query") if query else model.encode(texts)
    return np.asarray(vectors, dtype=np.float32)


def hidden_state_vectors(path: Path, texts: list[str], *, layer: int, pooling: str) -> np.ndarray:
    """A causal LM read at `hidden_states[layer]`, one text at a time, pooled here, L2-normalised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded, output_hidden_states=True).hidden_states[layer][0]
        vector = hidden.mean(dim=0) if pooling == "mean" else hidden[-1]
        rows.append((vector / vector.norm()).numpy())
    return np.stack(rows).astype(np.float32)


def siglip_vectors(path: Path, images: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The SigLIP / SigLIP2 cards: the processor (texts padded to max_length 64), `get_image_features`,
    `get_text_features`, then L2 normalisation."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    with torch.no_grad():
        image_inputs = processor(images=images, return_tensors="pt")
        image_features = model.get_image_features(**image_inputs)
        text_inputs = processor(text=texts, padding="max_length", max_length=64, return_tensors="pt")
        text_features = model.get_text_features(**text_inputs)
    pooled = [getattr(features, "pooler_output", features) for features in (image_features, text_features)]
    normed = [(tensor / tensor.norm(dim=-1, keepdim=True)).numpy() for tensor in pooled]
    return normed[0].astype(np.float32), normed[1].astype(np.float32)


def qwen3_reranker_scores(path: Path, pairs: list[tuple[str, str]], instruction: str | None = None) -> np.ndarray:
    """Qwen3-Reranker's model card: prefix + the pair's tokens (cut to what is left of 8192) + suffix, left padding,
    `log_softmax` over the last position's [no, yes] logits, `exp` of the yes column."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)
    task = instruction or "Given a web search query, retrieve relevant passages that answer the query"
    texts = [f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {document}" for query, document in pairs]
    inputs = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=8192 - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ids in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ids + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=8192)
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1, :]
    pair_logits = torch.stack([logits[:, no], logits[:, yes]], dim=1)
    return torch.nn.functional.log_softmax(pair_logits, dim=1)[:, 1].exp().numpy().astype(np.float32)
