"""`embedding_api.families.base`: `l2_normalize` and `finish_vectors` (normalise, cut to `dimensions`, normalise
again), against vectors worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_api.families.base import finish_vectors, l2_normalize

# Rows with whole-number norms: |(3, 4, 12, 0)| = 13, |(3, 4)| = 5, |(0, 0, 0, 2)| = 2, |(0, 0)| = 0.
POOLED = np.array([[3.0, 4.0, 12.0, 0.0], [0.0, 0.0, 0.0, 2.0]], dtype=np.float32)


def test_l2_normalize_divides_each_row_by_its_length() -> None:
    matrix = np.array([[3.0, 4.0], [0.0, 5.0], [-6.0, 8.0]], dtype=np.float32)
    expected = np.array([[0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(matrix), expected, rtol=0, atol=1e-7)


def test_l2_normalize_leaves_a_zero_row_at_zero() -> None:
    out = l2_normalize(np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32))


def test_full_size_normalised() -> None:
    out = finish_vectors(POOLED, None, True)
    expected = np.array([[3 / 13, 4 / 13, 12 / 13, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_truncation_then_renormalisation() -> None:
    """Cut to 2: (3/13, 4/13) is renormalised to (3/5, 4/5); the second row's first two values are zero and stay so."""
    out = finish_vectors(POOLED, 2, True)
    expected = np.array([[0.6, 0.8], [0.0, 0.0]], dtype=np.float32)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_truncation_to_three_renormalises_each_row() -> None:
    """(3, 4, 12) has norm 13; (0, 0, 0) stays zero."""
    out = finish_vectors(POOLED, 3, True)
    expected = np.array([[3 / 13, 4 / 13, 12 / 13], [0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, atol=1e-6)


def test_truncated_rows_are_unit_length_when_normalised() -> None:
    pooled = np.array([[1.0, 2.0, 2.0, 100.0], [2.0, -1.0, -2.0, 0.5]], dtype=np.float32)  # first 3: norm 3 each
    out = finish_vectors(pooled, 3, True)
    expected = np.array([[1 / 3, 2 / 3, 2 / 3], [2 / 3, -1 / 3, -2 / 3]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_normalize_false_keeps_the_raw_values() -> None:
    out = finish_vectors(POOLED, None, False)
    np.testing.assert_array_equal(out, np.array([[3.0, 4.0, 12.0, 0.0], [0.0, 0.0, 0.0, 2.0]], dtype=np.float32))


def test_normalize_false_truncates_without_rescaling() -> None:
    out = finish_vectors(POOLED, 2, False)
    np.testing.assert_array_equal(out, np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))


@pytest.mark.parametrize("normalize", [True, False])
def test_dimensions_none_keeps_every_column(normalize: bool) -> None:
    assert finish_vectors(POOLED, None, normalize).shape == (2, 4)


def test_the_output_is_contiguous_float32_and_the_input_is_untouched() -> None:
    pooled = np.array([[3.0, 4.0, 12.0, 0.0]], dtype=np.float64)
    out = finish_vectors(pooled, 2, True)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(pooled, np.array([[3.0, 4.0, 12.0, 0.0]]))
    np.testing.assert_allclose(out, np.array([[0.6, 0.8]], dtype=np.float32), rtol=0, atol=1e-7)
