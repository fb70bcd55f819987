"""Padding-free batches for decoder families: several sequences in one row, attention per sequence.

The linear layers see only the batch's real tokens, in one matrix; attention runs on each sequence alone with
PyTorch's SDPA. No work goes to pad tokens, and each vector equals the one of its sequence run alone (no mask
arithmetic differs). Registered with transformers as the attention implementation `packed_sdpa`: outside a packed
forward pass, and in non-causal modules (a vision tower), it is plain SDPA.

Sequences that begin with the same tokens (a reranker's pairs share the judge's prompt and the query; embedding
inputs share their template and instruction) keep those tokens once: a later sequence's row holds only the rest,
and its attention reads the shared tokens' keys and values where the earlier sequence computed them. Same tokens at
the same positions give the same keys and values, so each result is still its sequence's alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from embedding_api.families.base import Span

ATTENTION = "packed_sdpa"
# Shorter shared prefixes are computed again: a context costs a key/value copy per layer, worth it from a few tokens.
MIN_SHARED_TOKENS = 8
# How many earlier sequences of the batch a sequence is compared with (one request's items are adjacent).
LOOKBACK = 4

_layout = threading.local()  # the running forward pass's plan (the device thread's own)


@dataclass(frozen=True)
class _SpanPlan:
    """How one sequence's attention is computed in every layer of a forward pass."""

    own: slice  # the sequence's own rows of the packed row (its output rows)
    gather: torch.Tensor | None  # rows read for its queries, keys and values, context first (None: `own` alone)
    mask: torch.Tensor | None  # keys each own query sees, when the queries are its own rows only


def _plan(span: Span, device: torch.device) -> _SpanPlan:
    own = slice(span.start, span.end)
    if not span.context:
        return _SpanPlan(own, None, None)
    rows = torch.cat([torch.arange(start, end) for start, end in (*span.context, (span.start, span.end))])
    shared, length = span.context_length, span.end - span.start
    if shared <= length:
        # The shared tokens' queries are in the row too: attend as the whole sequence (square, causal, as run
        # alone) and keep the own rows; costs a few extra query rows, and the kernel skips masked blocks.
        return _SpanPlan(own, rows.to(device), None)
    # A long context before a short tail (a reranker's long query): the tail's queries alone, every context key,
    # then causal over the tail (the lower-right causal mask).
    mask = torch.ones(length, shared + length, dtype=torch.bool).tril(shared)[None, None]
    return _SpanPlan(own, rows.to(device), mask.to(device))


@contextmanager
def packed_sequences(spans: list[Span], device: torch.device | str = "cpu") -> Iterator[None]:
    """Within this block, causal attention on this thread treats the row as these sequences."""
    _layout.plans = [_plan(span, torch.device(device)) for span in spans]
    try:
        yield
    finally:
        _layout.plans = None


def in_packed_pass() -> bool:
    """Whether this thread is inside `packed_sequences`."""
    return getattr(_layout, "plans", None) is not None


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: Any) -> Any:
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )


def _attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    plans: list[_SpanPlan] | None = getattr(_layout, "plans", None)
    if plans is None or not getattr(module, "is_causal", False):
        output: tuple[torch.Tensor, None] = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return output
    scale = kwargs.get("scaling")
    # (batch, rows, heads, head_dim), as transformers' attention modules read it back
    output_rows = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for plan in plans:
        if plan.gather is None:
            part = _sdpa(query[:, :, plan.own], key[:, :, plan.own], value[:, :, plan.own], None, scale)
        else:
            keys, values = key.index_select(2, plan.gather), value.index_select(2, plan.gather)
            queries = query[:, :, plan.own] if plan.mask is not None else query.index_select(2, plan.gather)
            part = _sdpa(queries, keys, values, plan.mask, scale)
        length = plan.own.stop - plan.own.start
        output_rows[:, plan.own] = part[:, :, part.shape[2] - length :].transpose(1, 2)
    return output_rows, None


def last_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor | None:
    """Attention for each sequence's last token alone (`query` holds one row per sequence, in span order) over all
    of its keys, in the running packed pass; None outside one. Returns (batch, sequences, heads, head_dim)."""
    plans: list[_SpanPlan] | None = getattr(_layout, "plans", None)
    if plans is None:
        return None
    parts = []
    for index, plan in enumerate(plans):
        rows = plan.own if plan.gather is None else plan.gather
        keys = key[:, :, rows] if plan.gather is None else key.index_select(2, plan.gather)
        values = value[:, :, rows] if plan.gather is None else value.index_select(2, plan.gather)
        # the last token sees every key of its sequence: no mask
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, index : index + 1], keys, values, scale=scale, enable_gqa=True
            )
        )
    return torch.cat(parts, dim=2).transpose(1, 2)


def register() -> str:
    """Make `packed_sdpa` known to transformers (idempotent); returns its name for `attn_implementation`."""
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def sequence_bounds(lengths: list[int]) -> list[Span]:
    """Sequences one after the other, nothing shared."""
    spans, start = [], 0
    for length in lengths:
        spans.append(Span(start, start + length))
        start += length
    return spans


@dataclass
class SharedLayout:
    """A packed row with shared prefixes kept once: `keep` picks the row's tokens out of the full sequences laid
    end to end; `spans` says where each sequence is."""

    spans: list[Span]
    keep: torch.Tensor


def _first_tokens(span: Span, count: int) -> tuple[tuple[int, int], ...]:
    """The row ranges holding a sequence's first `count` tokens."""
    ranges = []
    for start, end in (*span.context, (span.start, span.end)):
        take = min(count, end - start)
        if take > 0:
            ranges.append((start, start + take))
        count -= take
    return tuple(ranges)


def share_prefixes(
    sequences: Sequence[Sequence[int]], *, unshareable: Sequence[int] = (), min_shared: int = MIN_SHARED_TOKENS
) -> SharedLayout:
    """The layout keeping each sequence's longest prefix shared with one of the LOOKBACK sequences before it once.

    A sequence keeps at least its last token (the one pooled), and nothing from its first `unshareable` token on
    (vision placeholders: their features are filled in by order of appearance)."""
    arrays = [np.asarray(ids, dtype=np.int64) for ids in sequences]
    blocked = np.asarray(unshareable, dtype=np.int64)
    spans: list[Span] = []
    keep: list[np.ndarray] = []
    offset = row = 0
    for index, ids in enumerate(arrays):
        limit = len(ids) - 1
        if blocked.size:
            hits = np.flatnonzero(np.isin(ids[:limit], blocked))
            limit = int(hits[0]) if hits.size else limit
        best, source = 0, -1
        for earlier in range(max(0, index - LOOKBACK), index):
            reach = min(limit, len(arrays[earlier]))
            if reach <= best:
                continue
            differ = np.flatnonzero(ids[:reach] != arrays[earlier][:reach])
            shared = int(differ[0]) if differ.size else reach
            if shared > best:
                best, source = shared, earlier
        if best < min_shared:
            best = 0
        context = _first_tokens(spans[source], best) if best else ()
        length = len(ids) - best
        spans.append(Span(row, row + length, context))
        keep.append(np.arange(offset + best, offset + len(ids)))
        offset += len(ids)
        row += length
    return SharedLayout(spans=spans, keep=torch.from_numpy(np.concatenate(keep)) if keep else torch.zeros(0))
