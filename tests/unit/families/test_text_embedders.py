"""Qwen3-Embedding and the hidden-state embedder against their oracles: sentence-transformers as the model card
calls it, and `output_hidden_states` pooled in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from embedding_api.errors import ApiError
from embedding_api.families import packing
from embedding_api.families.text_embedders import QWEN3_EMBEDDING, TextEmbedderFamily, hidden_state_recipe
from embedding_api.items import Item
from tests.support.families import (
    QWEN3_TASK,
    hidden_state_vectors,
    sentence_transformers_vectors,
)

TEXTS = [
    "hello world",
    "a much longer text about the weather in spring and autumn, and what the farmers make of it " * 3,
    "x",
    "你好，世界",
]


def _family(path: Path, recipe: object, max_length: int = 8192, *, packed: bool = False) -> TextEmbedderFamily:
    attention = packing.register() if packed else "sdpa"  # packed: padding-free batches, as on the CPU server
    model = AutoModel.from_pretrained(path, attn_implementation=attention).eval()
    return TextEmbedderFamily(
        model, AutoTokenizer.from_pretrained(path), recipe, device=torch.device("cpu"), max_length=max_length
    )


def _embed(family: TextEmbedderFamily, items: list[Item], dimensions: int | None = None) -> np.ndarray:
    prepared = [family.prepare(item) for item in items]
    return family.finish(family.run(family.collate(prepared)), dimensions, True)


def test_qwen3_embedding_documents_equal_sentence_transformers(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    ours = _embed(_family(path, QWEN3_EMBEDDING), [Item(texts=[text]) for text in TEXTS])
    np.testing.assert_allclose(ours, sentence_transformers_vectors(path, TEXTS, query=False), atol=1e-5)


def test_qwen3_embedding_queries_with_an_instruction_equal_the_query_prompt(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    family = _family(path, QWEN3_EMBEDDING)
    queries = _embed(family, [Item(texts=[text], instruction=QWEN3_TASK) for text in TEXTS])
    np.testing.assert_allclose(queries, sentence_transformers_vectors(path, TEXTS, query=True), atol=1e-5)
    documents = _embed(family, [Item(texts=[text]) for text in TEXTS])
    assert np.abs(queries - documents).max() > 1e-2  # the instruction is part of the vector


def test_qwen3_embedding_appends_the_end_of_text_token_and_pools_it(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    family = _family(path, QWEN3_EMBEDDING)
    prepared = family.prepare(Item(texts=["hello world"]))
    assert prepared.payload[-1] == family.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_qwen3_embedding_dimensions_cut_then_renormalise(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    family = _family(path, QWEN3_EMBEDDING)
    full = sentence_transformers_vectors(path, TEXTS, query=False)
    cut = _embed(family, [Item(texts=[text]) for text in TEXTS], dimensions=16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)


def test_batched_equals_one_by_one_across_very_different_lengths(family_dirs: dict[str, Path]) -> None:
    for path, recipe in (
        (family_dirs["qwen3_embedding"], QWEN3_EMBEDDING),
        (family_dirs["causal_lm"], hidden_state_recipe()),
    ):
        family = _family(path, recipe)
        items = [Item(texts=[text]) for text in TEXTS]
        together = _embed(family, items)
        alone = np.concatenate([_embed(family, [item]) for item in items])
        np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(("layer", "pooling"), [(-2, "mean"), (-1, "mean"), (-2, "last"), (1, "mean")])
def test_hidden_state_embedder_equals_the_pooled_hidden_layer(
    family_dirs: dict[str, Path], layer: int, pooling: str
) -> None:
    path = family_dirs["causal_lm"]
    ours = _embed(_family(path, hidden_state_recipe(layer, pooling)), [Item(texts=[text]) for text in TEXTS])  # type: ignore[arg-type]
    expected = hidden_state_vectors(path, TEXTS, layer=layer, pooling=pooling)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_the_default_reads_the_second_to_last_layer(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["causal_lm"]
    ours = _embed(_family(path, hidden_state_recipe()), [Item(texts=[text]) for text in TEXTS])
    np.testing.assert_allclose(ours, hidden_state_vectors(path, TEXTS, layer=-2, pooling="mean"), atol=1e-5)
    last_layer = hidden_state_vectors(path, TEXTS, layer=-1, pooling="mean")
    assert np.abs(ours - last_layer).max() > 1e-2


def test_long_text_is_cut_keeping_the_end_of_text_token_or_refused(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    family = _family(path, QWEN3_EMBEDDING, max_length=16)
    long_text = "the quick brown fox jumps over the lazy dog " * 10
    prepared = family.prepare(Item(texts=[long_text]))
    assert prepared.tokens == 16
    assert prepared.payload[-1] == family.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with pytest.raises(ApiError) as refused:
        family.prepare(Item(texts=[long_text], truncate=False))
    assert refused.value.status == 400
    assert "MAX_LENGTH=16" in str(refused.value)


def test_images_are_refused(family_dirs: dict[str, Path]) -> None:
    from PIL import Image

    family = _family(family_dirs["causal_lm"], hidden_state_recipe())
    with pytest.raises(ApiError) as refused:
        family.prepare(Item(images=[Image.new("RGB", (8, 8))]))
    assert refused.value.status == 400


@pytest.mark.parametrize("kind", ["qwen3_embedding", "causal_lm"])
def test_padding_free_batches_equal_the_oracle_and_one_by_one(family_dirs: dict[str, Path], kind: str) -> None:
    path = family_dirs[kind]
    recipe = QWEN3_EMBEDDING if kind == "qwen3_embedding" else hidden_state_recipe()
    family = _family(path, recipe, packed=True)
    assert family.packs_sequences
    items = [Item(texts=[text]) for text in TEXTS]
    together = _embed(family, items)
    if kind == "qwen3_embedding":
        expected = sentence_transformers_vectors(path, TEXTS, query=False)
    else:
        expected = hidden_state_vectors(path, TEXTS, layer=-2, pooling="mean")
    np.testing.assert_allclose(together, expected, atol=1e-5)
    alone = np.concatenate([_embed(family, [item]) for item in items])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_padding_free_queries_share_their_instruction_and_equal_the_query_prompt(family_dirs: dict[str, Path]) -> None:
    path = family_dirs["qwen3_embedding"]
    family = _family(path, QWEN3_EMBEDDING, packed=True)
    prepared = [family.prepare(Item(texts=[text], instruction=QWEN3_TASK)) for text in TEXTS]
    batch = family.collate(prepared)
    assert batch.spans is not None and all(span.context for span in batch.spans[1:])  # "Instruct: ...\nQuery:" once
    queries = family.finish(family.run(batch), None, True)
    np.testing.assert_allclose(queries, sentence_transformers_vectors(path, TEXTS, query=True), atol=1e-5)
