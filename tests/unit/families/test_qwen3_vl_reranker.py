"""Qwen3-VL-Reranker against the recipe's own scoring (tests/support/reference_reranker.py): one pair per forward
pass there, batched pairs here; every modality on either side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedding_api.catalog import ModelSpec
from embedding_api.errors import ApiError
from embedding_api.families import packing
from embedding_api.families.loader import load_family
from embedding_api.families.qwen3_vl_reranker import Qwen3VLRerankerFamily
from embedding_api.items import Item, VideoClip
from embedding_api.settings import Settings
from tests.support.reference_recipe import RefItem
from tests.support.reference_reranker import reference_rerank


def _image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def reranker(family_dirs: dict[str, Path]) -> Qwen3VLRerankerFamily:
    family = load_family(
        Settings(_env_file=None, device="cpu"), ModelSpec(name="rr", path=str(family_dirs["vl_reranker"]))
    )
    assert isinstance(family, Qwen3VLRerankerFamily)
    return family


def _item(ref: RefItem) -> Item:
    videos = [VideoClip(frames=list(video)) for video in ref.videos if not isinstance(video, str)]
    return Item(texts=list(ref.texts), images=list(ref.images), videos=videos)


def _scores(family: Qwen3VLRerankerFamily, query: RefItem, documents: list[RefItem], **options: object) -> np.ndarray:
    pairs = []
    for document in documents:
        pair = _item(query)
        pair.instruction = options.get("instruction")  # type: ignore[assignment]
        pair.document = _item(document)
        pairs.append(pair)
    prepared = [family.prepare(pair) for pair in pairs]
    return family.score(family.run(family.collate(prepared)))


DOCUMENTS = [
    RefItem(texts=["a cat is a small furry animal that purrs"]),
    RefItem(images=[_image(48, 40, 1)]),
    RefItem(texts=["a caption"], images=[_image(64, 32, 2)]),  # fused
    RefItem(videos=[[_image(48, 48, 3 + i) for i in range(4)]]),  # video frames
    RefItem(texts=["x"]),
]


@pytest.mark.parametrize(
    "query",
    [
        RefItem(texts=["what is a cat"]),
        RefItem(images=[_image(40, 60, 9)]),
        RefItem(texts=["this"], images=[_image(32, 32, 8)]),
    ],
    ids=["text", "image", "fused"],
)
def test_scores_equal_the_recipe_for_every_modality(
    reranker: Qwen3VLRerankerFamily, family_dirs: dict[str, Path], query: RefItem
) -> None:
    expected = reference_rerank(family_dirs["vl_reranker"], query, DOCUMENTS)
    ours = _scores(reranker, query, DOCUMENTS)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert np.all((ours > 0) & (ours < 1))


def test_an_instruction_changes_the_scores_as_the_recipe_does(
    reranker: Qwen3VLRerankerFamily, family_dirs: dict[str, Path]
) -> None:
    query = RefItem(texts=["what is a cat"])
    instruction = "Find pictures of pets"
    expected = reference_rerank(family_dirs["vl_reranker"], query, DOCUMENTS, instruction=instruction)
    ours = _scores(reranker, query, DOCUMENTS, instruction=instruction)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert np.abs(ours - _scores(reranker, query, DOCUMENTS)).max() > 1e-4


def test_batched_pairs_equal_one_by_one(reranker: Qwen3VLRerankerFamily) -> None:
    query = RefItem(texts=["what is a cat"])
    together = _scores(reranker, query, DOCUMENTS)
    alone = np.concatenate([_scores(reranker, query, [document]) for document in DOCUMENTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(
    "query, document",
    [
        (RefItem(texts=["what is a cat"]), RefItem(texts=["a cat is a small furry animal " * 60])),
        (RefItem(texts=["what is a cat"]), RefItem(texts=["a caption " * 80], images=[_image(48, 40, 6)])),
        (RefItem(texts=["a very long question about cats " * 40]), RefItem(texts=["a short answer"])),
        (RefItem(images=[_image(40, 60, 9)]), RefItem(videos=[[_image(48, 48, 3 + i) for i in range(4)]])),
    ],
    ids=["long-text", "long-caption-with-image", "long-query", "vision-over-the-limit"],
)
def test_over_long_pairs_are_cut_as_the_official_code_cuts_them(
    reranker: Qwen3VLRerankerFamily, family_dirs: dict[str, Path], query: RefItem, document: RefItem
) -> None:
    short = Qwen3VLRerankerFamily.__new__(Qwen3VLRerankerFamily)
    short.__dict__.update(reranker.__dict__)
    short.max_length = 100
    pair = _item(query)
    pair.document = _item(document)
    prepared = short.prepare(pair)
    assert prepared.payload.cut_to == 100
    batch = short.collate([prepared])
    assert batch.token_counts[0] >= 100 + 5  # cut to the limit plus the template's end, not below
    expected = reference_rerank(family_dirs["vl_reranker"], query, [document], max_length=100)
    np.testing.assert_allclose(short.score(short.run(batch)), expected, atol=1e-5)
    full = reference_rerank(family_dirs["vl_reranker"], query, [document])
    assert abs(float(full[0]) - float(expected[0])) > 1e-5  # the cut changed the score: it was exercised


def test_an_over_long_pair_is_refused_when_truncate_is_false(reranker: Qwen3VLRerankerFamily) -> None:
    short = Qwen3VLRerankerFamily.__new__(Qwen3VLRerankerFamily)
    short.__dict__.update(reranker.__dict__)
    short.max_length = 100
    refused = Item(texts=["what is a cat"], truncate=False)
    refused.document = Item(texts=["a cat is a small furry animal " * 60])
    with pytest.raises(ApiError) as error:
        short.prepare(refused)
    assert error.value.status == 400 and error.value.code == "input_too_long"


def test_pairs_computed_once_up_to_their_document_equal_the_recipe(
    reranker: Qwen3VLRerankerFamily, family_dirs: dict[str, Path]
) -> None:
    query = RefItem(texts=["which garden letter mentions the river in the morning"])
    documents = [
        RefItem(texts=["x"]),
        RefItem(texts=["the river ran past the garden wall every morning, " * 12]),
        RefItem(images=[_image(48, 40, 5)]),
        RefItem(texts=["a letter"]),
    ]
    pairs = []
    for document in documents:
        pair = _item(query)
        pair.document = _item(document)
        pairs.append(reranker.prepare(pair))
    batch = reranker.collate(pairs)
    assert batch.spans is not None
    # every pair after the first reads the judge's prompt and the query from the first pair's tokens
    assert all(span.context_length >= 20 for span in batch.spans[1:])
    assert batch.tensors["input_ids"].shape[1] < sum(batch.token_counts)
    ours = reranker.score(reranker.run(batch))
    np.testing.assert_allclose(ours, reference_rerank(family_dirs["vl_reranker"], query, documents), atol=1e-5)


def test_a_prefix_kept_from_one_pass_is_read_by_the_next_and_the_scores_equal_the_recipe(
    family_dirs: dict[str, Path],
) -> None:
    # a fresh family: the module's shared one may already keep this prefix
    reranker = load_family(
        Settings(_env_file=None, device="cpu"), ModelSpec(name="rr", path=str(family_dirs["vl_reranker"]))
    )
    assert isinstance(reranker, Qwen3VLRerankerFamily)
    query = RefItem(texts=["which garden letter mentions the river in the morning, and which one the bridge"])
    documents = [
        RefItem(texts=["the river ran past the garden wall"]),
        RefItem(texts=["a letter about the bridge"]),
        RefItem(texts=["x"]),
        RefItem(texts=["nothing at all " * 30]),
        RefItem(images=[_image(48, 40, 5)]),
    ]
    prepared = []
    for document in documents:
        pair = _item(query)
        pair.document = _item(document)
        prepared.append(reranker.prepare(pair))
    first = reranker.collate(prepared[:2])  # keeps the judge's prompt and the query ...
    assert first.spans is not None and first.spans[1].context_length >= packing.MIN_STORED_TOKENS
    scores = list(reranker.score(reranker.run(first)))
    assert len(reranker._prefixes._entries) == 1
    read = []
    original = reranker._prefixes.longest
    reranker._prefixes.longest = lambda ids: read.append(original(ids)) or read[-1]  # type: ignore[method-assign]
    scores += list(reranker.score(reranker.run(reranker.collate(prepared[2:4]))))  # ... read by a later pass
    scores += list(reranker.score(reranker.run(reranker.collate(prepared[4:]))))  # and by a lone pair with an image
    assert len(read) == 2 and all(entry is not None for entry in read)
    np.testing.assert_allclose(scores, reference_rerank(family_dirs["vl_reranker"], query, documents), atol=1e-5)
