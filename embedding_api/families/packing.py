"""Padding-free batches for decoder families: several sequences in one row, attention per sequence.

The linear layers see only the batch's real tokens, in one matrix; attention runs on each sequence alone with
PyTorch's causal SDPA. No work goes to pad tokens, and each vector equals the one of its sequence run alone (no
mask arithmetic differs). Registered with transformers as the attention implementation `packed_sdpa`: outside a
packed forward pass, and in non-causal modules (a vision tower), it is plain SDPA.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "packed_sdpa"

_layout = threading.local()  # the running forward pass's sequence bounds (the device thread's own)


@contextmanager
def packed_sequences(bounds: list[tuple[int, int]]) -> Iterator[None]:
    """Within this block, causal attention on this thread treats [start, end) spans of the row as sequences."""
    _layout.bounds = bounds
    try:
        yield
    finally:
        _layout.bounds = None


def _attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    bounds = getattr(_layout, "bounds", None)
    if bounds is None or not getattr(module, "is_causal", False):
        output: tuple[torch.Tensor, None] = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return output
    kwargs.pop("is_causal", None)
    parts = [
        sdpa_attention_forward(
            module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None, is_causal=True, **kwargs
        )[0]
        for start, end in bounds
    ]
    return torch.cat(parts, dim=1), None


def register() -> str:
    """Make `packed_sdpa` known to transformers (idempotent); returns its name for `attn_implementation`."""
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def sequence_bounds(lengths: list[int]) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for length in lengths:
        bounds.append((start, start + length))
        start += length
    return bounds
