"""Qwen3-Reranker (text) against its model card's scoring code (tests/support/families.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedding_api.catalog import ModelSpec
from embedding_api.errors import ApiError
from embedding_api.families.loader import load_family
from embedding_api.families.qwen3_reranker import Qwen3RerankerFamily
from embedding_api.items import Item
from embedding_api.settings import Settings
from tests.support.families import qwen3_reranker_scores

PAIRS = [
    ("what is a cat", "a cat is a small furry animal"),
    ("what is a cat", "the stock market fell " * 20),
    ("capital of France", "Paris"),
    ("x", "y"),
]


@pytest.fixture(scope="module")
def reranker(family_dirs: dict[str, Path]) -> Qwen3RerankerFamily:
    spec = ModelSpec(name="qr", path=str(family_dirs["qwen3_reranker"]))
    family = load_family(Settings(_env_file=None, device="cpu"), spec)
    assert isinstance(family, Qwen3RerankerFamily)
    return family


def _scores(family: Qwen3RerankerFamily, pairs: list[tuple[str, str]], instruction: str | None = None) -> np.ndarray:
    items = []
    for query, document in pairs:
        item = Item(texts=[query], instruction=instruction)
        item.document = Item(texts=[document])
        items.append(item)
    prepared = [family.prepare(item) for item in items]
    return family.score(family.run(family.collate(prepared)))


def test_scores_equal_the_model_card(reranker: Qwen3RerankerFamily, family_dirs: dict[str, Path]) -> None:
    expected = qwen3_reranker_scores(family_dirs["qwen3_reranker"], PAIRS)
    np.testing.assert_allclose(_scores(reranker, PAIRS), expected, atol=1e-5)


def test_an_instruction_is_part_of_the_pair(reranker: Qwen3RerankerFamily, family_dirs: dict[str, Path]) -> None:
    expected = qwen3_reranker_scores(family_dirs["qwen3_reranker"], PAIRS, instruction="Find French cities")
    ours = _scores(reranker, PAIRS, instruction="Find French cities")
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert np.abs(ours - _scores(reranker, PAIRS)).max() > 1e-5


def test_batched_equals_one_by_one(reranker: Qwen3RerankerFamily) -> None:
    together = _scores(reranker, PAIRS)
    alone = np.concatenate([_scores(reranker, [pair]) for pair in PAIRS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_images_are_refused(reranker: Qwen3RerankerFamily) -> None:
    from PIL import Image

    item = Item(texts=["q"])
    item.document = Item(images=[Image.new("RGB", (8, 8))])
    with pytest.raises(ApiError) as refused:
        reranker.prepare(item)
    assert refused.value.status == 400
