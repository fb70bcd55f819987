"""Only the pooled tokens need the last decoder layer's MLP.

With last-token pooling, the final layer's output is read at one position per sequence; its MLP (three quarters of
the layer's matrix work) is computed for those rows only, the other rows get zeros that nobody reads. Attention in
that layer still sees every token, so the pooled vectors are unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = threading.local()  # the running forward pass's pooled rows (the device thread's own)


@contextmanager
def pooled_rows(rows: torch.Tensor) -> Iterator[None]:
    """Within this block, the wrapped MLP on this thread computes these flat token rows only."""
    _state.rows = rows
    try:
        yield
    finally:
        _state.rows = None


class PooledRowsMLP(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """Wraps the last decoder layer's MLP; outside `pooled_rows` it is the MLP itself."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = getattr(_state, "rows", None)
        if rows is None:
            output: torch.Tensor = self.mlp(hidden)
            return output
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = torch.zeros_like(flat)
        out[rows] = self.mlp(flat[rows])
        return out.view_as(hidden)


def wrap_last_mlp(layers: torch.nn.ModuleList) -> None:
    """Install the wrapper on the last decoder layer (idempotent)."""
    last = layers[-1]
    if not isinstance(last.mlp, PooledRowsMLP):
        last.mlp = PooledRowsMLP(last.mlp)
