"""`embedding_api.service.quantize` against its oracle, sentence-transformers' `quantize_embeddings`, on the same
float vectors and the same ranges: every precision, with and without `dimensions`, from pooled vectors and from
calibration files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings

from embedding_api.families.base import finish_vectors
from embedding_api.service.quantize import (
    CALIBRATION_TEXTS,
    CalibrationError,
    bytes_per_vector,
    from_file,
    from_pooled,
    quantize,
    ranges_of,
)

DIMENSION = 64
COMPACT = ("int8", "uint8", "binary", "ubinary")


def pooled(count: int, seed: int) -> np.ndarray:
    """Unfinished vectors with per-dimension offsets and scales, as a model's pooled states have."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(count, DIMENSION)) * rng.uniform(0.5, 3, DIMENSION) + rng.normal(size=DIMENSION)).astype(
        np.float32
    )


@pytest.mark.parametrize("precision", COMPACT)
@pytest.mark.parametrize("dimensions", [None, 32, 13])  # 13: not a multiple of 8
@pytest.mark.parametrize("normalize", [True, False])
def test_equal_to_sentence_transformers(precision: Any, dimensions: int | None, normalize: bool) -> None:
    calibration = from_pooled(pooled(200, seed=1), finish_vectors)
    vectors = finish_vectors(pooled(50, seed=2), dimensions, normalize)
    ranges = calibration.ranges_for(dimensions, normalize)
    ours = quantize(vectors, precision, ranges)
    expected = quantize_embeddings(vectors, precision, ranges=ranges)
    assert isinstance(expected, np.ndarray)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)
    # The ranges are those of the calibration vectors finished like the request's (cut, then normalised again):
    finished = finish_vectors(pooled(200, seed=1), dimensions, normalize)
    np.testing.assert_array_equal(
        ours, quantize_embeddings(vectors, precision, calibration_embeddings=finished), strict=True
    )


def test_values_outside_the_ranges_clip_and_a_flat_dimension_uses_a_step_of_one() -> None:
    ranges = np.array([[-1.0, 0.0, 0.5], [1.0, 2.0, 0.5]], dtype=np.float32)  # the last dimension has no width
    vectors = np.array([[-5.0, 3.0, 0.5], [5.0, -3.0, 0.7], [0.0, 1.0, 2.0]], dtype=np.float32)
    for precision in ("int8", "uint8"):
        expected = quantize_embeddings(vectors, precision, ranges=ranges)
        np.testing.assert_array_equal(quantize(vectors, precision, ranges), expected)
    np.testing.assert_array_equal(quantize(vectors, "uint8", ranges)[:2, :2], [[0, 255], [255, 0]])


def test_binary_packs_the_sign_bits_most_significant_first_and_pads_the_last_byte() -> None:
    vector = np.array([[1, -1, 0, 2, -3, 4, 5, -6, 0.5, 0.1, -0.1]], dtype=np.float32)  # 11 dimensions
    np.testing.assert_array_equal(quantize(vector, "ubinary"), [[0b10010110, 0b11000000]])
    np.testing.assert_array_equal(quantize(vector, "binary"), [[0b10010110 - 128, 0b11000000 - 128]])
    assert quantize(vector, "binary").dtype == np.int8  # 0 (x <= 0 everywhere) is -128
    np.testing.assert_array_equal(quantize(np.zeros((1, 8), np.float32), "binary"), [[-128]])


def test_int8_needs_ranges_and_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match="ranges"):
        quantize(np.ones((1, 4), np.float32), "int8")
    with pytest.raises(ValueError, match="unknown precision"):
        quantize(np.ones((1, 4), np.float32), "int4")


def test_bytes_per_vector() -> None:
    assert [bytes_per_vector(p, 1024) for p in ("float", "int8", "uint8", "binary", "ubinary")] == [
        4096,
        1024,
        1024,
        128,
        128,
    ]
    assert bytes_per_vector("binary", 13) == 2


def test_ranges_are_cached_per_shape() -> None:
    calibration = from_pooled(pooled(20, seed=3), finish_vectors)
    first = calibration.ranges_for(16, True)
    assert calibration.ranges_for(16, True) is first
    assert calibration.ranges_for(None, True).shape == (2, DIMENSION)
    assert calibration.describe() == {"source": "builtin", "samples": 20}


# ---- calibration files --------------------------------------------------------------------------------------------


def test_a_file_of_embeddings_is_finished_like_the_request(tmp_path: Path) -> None:
    embeddings = finish_vectors(pooled(120, seed=4), None, True)  # what /v1/embeddings returns
    path = tmp_path / "calibration.npy"
    np.save(path, embeddings)
    calibration = from_file(str(path), DIMENSION, finish_vectors)
    assert calibration.describe() == {"source": "file", "samples": 120, "path": "calibration.npy"}
    vectors = finish_vectors(pooled(30, seed=5), 24, True)
    for precision in ("int8", "uint8"):
        ours = quantize(vectors, precision, calibration.ranges_for(24, True))
        oracle = quantize_embeddings(vectors, precision, calibration_embeddings=finish_vectors(embeddings, 24, True))
        np.testing.assert_array_equal(ours, oracle)


def test_a_file_of_ranges_is_used_as_given_and_cut_to_the_dimensions(tmp_path: Path) -> None:
    ranges = ranges_of(finish_vectors(pooled(100, seed=6), None, True)).astype(np.float64)
    path = tmp_path / "ranges.npy"
    np.save(path, ranges)
    calibration = from_file(str(path), DIMENSION, finish_vectors)
    assert calibration.samples == 0
    vectors = finish_vectors(pooled(10, seed=7), None, True)
    np.testing.assert_array_equal(
        quantize(vectors, "int8", calibration.ranges_for(None, True)),
        quantize_embeddings(vectors, "int8", ranges=ranges),
    )
    assert calibration.ranges_for(8, True).shape == (2, 8)
    np.testing.assert_array_equal(calibration.ranges_for(8, True), ranges[:, :8].astype(np.float32))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (np.zeros((10, DIMENSION + 1), np.float32), f"(n, {DIMENSION})"),
        (np.zeros((10,), np.float32), "shape"),
        (np.zeros((10, DIMENSION), np.int8), "float"),
        (np.ones((1, DIMENSION), np.float32), "one vector"),
        (np.vstack([np.ones(DIMENSION), np.zeros(DIMENSION)]).astype(np.float32), "min is above its max"),
        (np.full((4, DIMENSION), np.nan, np.float32), "NaN"),
    ],
)
def test_unusable_files_say_why(tmp_path: Path, content: np.ndarray, fragment: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(CalibrationError, match="calibration file") as caught:
        from_file(str(path), DIMENSION, finish_vectors)
    assert fragment in str(caught.value)


def test_a_missing_or_foreign_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="cannot be read"):
        from_file(str(tmp_path / "missing.npy"), DIMENSION, finish_vectors)
    text = tmp_path / "ranges.txt"
    text.write_text("0 1 2")
    with pytest.raises(CalibrationError, match="cannot be read"):
        from_file(str(text), DIMENSION, finish_vectors)


def test_the_builtin_set_is_small_and_multilingual() -> None:
    assert 30 <= len(CALIBRATION_TEXTS) <= 64
    assert len(set(CALIBRATION_TEXTS)) == len(CALIBRATION_TEXTS)
    scripts = {"Cyrillic": "\u0400", "Arabic": "\u0600", "Devanagari": "\u0900", "Han": "\u4e00", "Hangul": "\uac00"}
    for name, start in scripts.items():
        low, high = ord(start), ord(start) + 0x1FF if name != "Han" else 0x9FFF
        if name == "Hangul":
            high = 0xD7AF
        assert any(low <= ord(c) <= high for text in CALIBRATION_TEXTS for c in text), name
