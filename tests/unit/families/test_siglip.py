"""SigLIP (FixRes) and SigLIP2 (NaFlex) against their model cards: the processor, `get_image_features` and
`get_text_features` with texts padded to 64 tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from embedding_api.errors import ApiError
from embedding_api.families.siglip import SiglipFamily
from embedding_api.items import Item
from tests.support.families import siglip_vectors

TEXTS = ["a photo of a cat", "two dogs playing in the snow near a red house", "x"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(40, 60), (100, 30), (32, 32), (17, 200)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _family(path: Path) -> SiglipFamily:
    model = AutoModel.from_pretrained(path).eval()
    return SiglipFamily(model, AutoProcessor.from_pretrained(path), device=torch.device("cpu"))


def _embed(family: SiglipFamily, items: list[Item]) -> np.ndarray:
    prepared = [family.prepare(item) for item in items]
    return family.finish(family.run(family.collate(prepared)), None, True)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_images_and_texts_equal_the_model_card(family_dirs: dict[str, Path], name: str) -> None:
    path = family_dirs[name]
    images = _images()
    expected_images, expected_texts = siglip_vectors(path, images, TEXTS)
    family = _family(path)
    # images and texts mixed in one batch, in an order of their own
    items = [Item(texts=[TEXTS[0]]), Item(images=[images[0]]), Item(images=[images[1]])]
    items += [Item(texts=[text]) for text in TEXTS[1:]] + [Item(images=[image]) for image in images[2:]]
    ours = _embed(family, items)
    expected = np.stack(
        [expected_texts[0], expected_images[0], expected_images[1], *expected_texts[1:], *expected_images[2:]]
    )
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    alone = np.concatenate([_embed(family, [item]) for item in items])
    np.testing.assert_allclose(ours, alone, atol=1e-5)


@pytest.mark.parametrize(
    "item",
    [
        Item(texts=["a", "b"]),
        Item(texts=["a"], images=[Image.new("RGB", (8, 8))]),
    ],
)
def test_fused_inputs_are_refused(family_dirs: dict[str, Path], item: Item) -> None:
    with pytest.raises(ApiError) as refused:
        _family(family_dirs["siglip"]).prepare(item)
    assert refused.value.status == 400
    assert "fused" in str(refused.value)
