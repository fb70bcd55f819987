"""`embedding_api.families.frames`: which source frames of a video file the model sees."""

from __future__ import annotations

import pytest

from embedding_api.families.frames import video_file_indices


@pytest.mark.parametrize(
    ("total", "rate", "limit", "expected"),
    [
        (1, 24.0, 64, [0]),
        (2, 24.0, 64, [0, 1]),
        (24, 24.0, 64, [0, 8, 15, 23]),
        (5, 1.0, 3, [0, 4]),
        (100, 10.0, 64, [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]),
        (3000, 1.0, 64, [round(i * 2999 / 63) for i in range(64)]),
    ],
)
def test_video_file_indices(total: int, rate: float, limit: int, expected: list[int]) -> None:
    assert video_file_indices(total, rate, limit) == expected
