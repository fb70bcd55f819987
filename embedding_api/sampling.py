"""Even subsampling of a frame sequence, shared by media fetching and the model adapters."""

from __future__ import annotations

import numpy as np


def even_positions(count: int, limit: int) -> list[int]:
    """At most `limit` positions spread evenly over `count` frames (first and last kept)."""
    if count <= limit:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, limit).round().astype(int)]
