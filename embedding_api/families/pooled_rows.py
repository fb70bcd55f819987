"""Only the pooled tokens need the last decoder layer's MLP, queries and attention output.

With last-token pooling, the final layer's output is read at one position per sequence; its MLP (three quarters of
the layer's matrix work) is computed for those rows only, the other rows get zeros that nobody reads. In a packed
pass its attention also computes queries, attention and the output projection for those rows only; keys and values
still cover every token, so the pooled vectors are unchanged.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from embedding_api.families import packing

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


class PooledRowsAttention(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """Wraps the last decoder layer's attention (Qwen3's layout: q/k norms, rotary, GQA); outside a packed pass
    within `pooled_rows` it is the attention itself."""

    def __init__(self, attention: torch.nn.Module) -> None:
        super().__init__()
        self.attention = attention
        # the model's own rotary function, so the pooled queries turn exactly as the full ones would
        self._rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb

    def forward(self, hidden_states: torch.Tensor, position_embeddings: Any, *args: Any, **kwargs: Any) -> Any:
        rows = getattr(_state, "rows", None)
        if rows is None or hidden_states.shape[0] != 1 or not packing.in_packed_pass():
            return self.attention(hidden_states, position_embeddings, *args, **kwargs)
        attention = self.attention
        head_dim = attention.head_dim
        cos, sin = position_embeddings
        key = attention.k_norm(attention.k_proj(hidden_states).view(1, hidden_states.shape[1], -1, head_dim))
        key = key.transpose(1, 2)
        value = attention.v_proj(hidden_states).view(1, hidden_states.shape[1], -1, head_dim).transpose(1, 2)
        pooled = hidden_states[0, rows]
        query = attention.q_norm(attention.q_proj(pooled).view(1, len(rows), -1, head_dim)).transpose(1, 2)
        query, _ = self._rotary(query, query, cos[:, rows], sin[:, rows])  # the function turns a pair: turn one
        key, _ = self._rotary(key, key, cos, sin)
        output = packing.last_query_attention(attention.layer_idx, query, key, value, attention.scaling)
        assert output is not None  # in_packed_pass() said so
        projected = attention.o_proj(output.reshape(1, len(rows), -1))
        out = hidden_states.new_zeros(hidden_states.shape)
        out[0, rows] = projected[0]
        return out, None


def wrap_last_layer(layers: torch.nn.ModuleList) -> None:
    """Install the wrappers on the last decoder layer (idempotent)."""
    last = layers[-1]
    if not isinstance(last.mlp, PooledRowsMLP):
        last.mlp = PooledRowsMLP(last.mlp)
    attention = last.self_attn
    qwen3_layout = all(hasattr(attention, name) for name in ("q_norm", "k_norm", "q_proj", "k_proj", "o_proj"))
    full_attention = getattr(attention, "sliding_window", None) is None
    if not isinstance(attention, PooledRowsAttention) and qwen3_layout and full_attention:
        last.self_attn = PooledRowsAttention(attention)
