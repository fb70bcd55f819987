"""Padding-free batches for decoder families: several sequences in one row, attention per sequence.

The linear layers see only the batch's real tokens, in one matrix; attention runs on each sequence alone with
PyTorch's SDPA. No work goes to pad tokens, and each vector equals the one of its sequence run alone (no mask
arithmetic differs). Registered with transformers as the attention implementation `packed_sdpa`: outside a packed
forward pass, and in non-causal modules (a vision tower), it is plain SDPA.

On float32 CPU rows, attention runs in one call per layer for the whole row, in a compiled kernel
(`cpu_kernels`) when it could be built; else, and in other dtypes, with SDPA sequence by sequence.

Sequences that begin with the same tokens (a reranker's pairs share the judge's prompt and the query; embedding
inputs share their template and instruction) keep those tokens once: a later sequence's row holds only the rest,
and its attention reads the shared tokens' keys and values where the earlier sequence computed them. Same tokens at
the same positions give the same keys and values, so each result is still its sequence's alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from embedding_api.families import cpu_kernels
from embedding_api.families.base import Span

ATTENTION = "packed_sdpa"
# Shorter shared prefixes are computed again: a context costs a key/value copy per layer, worth it from a few tokens.
MIN_SHARED_TOKENS = 8
# How many earlier sequences of the batch a sequence is compared with (one request's items are adjacent).
LOOKBACK = 4

# A shared prefix this long is kept (keys and values of every layer) for the next passes that begin with it.
MIN_STORED_TOKENS = 32
STORED_PREFIXES = 4  # kept per model, the most recently used
# Tokens kept over all of a model's stored prefixes: bounds their memory (the 2B model in float32 keeps 224 KiB of
# keys and values per token, so at most 448 MiB); a longer prefix is not kept.
STORED_TOKENS = 2048

_layout = threading.local()  # the running forward pass's plan (the device thread's own)


@dataclass(frozen=True)
class _SpanPlan:
    """How one sequence's attention is computed in every layer of a forward pass.

    Keys are addressed in the pass's key space: a stored prefix's keys, then the row's (so a row token keeps its
    index in the full row); queries and outputs in the row itself."""

    own: slice  # the sequence's own rows of the packed row (its queries and output rows)
    keys: slice | torch.Tensor  # the key-space positions it reads, context first
    queries: torch.Tensor | None  # rows of its queries, when these are more than `own` (read as its whole sequence)
    mask: torch.Tensor | None  # which keys each own query sees, when not plainly causal


def _key_ranges(span: Span, stored: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """A sequence's context ranges in the key space, and where its own tokens start there: the first sequence
    continues the stored prefix, if any; the others keep their contexts."""
    if span.start:
        return span.context, span.start
    return ((0, stored),) if stored else (), stored


def _plan(span: Span, device: torch.device, stored: int) -> _SpanPlan:
    context, start = _key_ranges(span, stored)
    own, length = slice(start - stored, span.end - stored), span.end - start
    if not context:
        return _SpanPlan(own, slice(span.start, span.end), None, None)
    rows = torch.cat([torch.arange(a, b) for a, b in (*context, (start, span.end))])
    shared = sum(b - a for a, b in context)
    if shared <= length and not stored:
        # The shared tokens' queries are in the row too: attend as the whole sequence (square, causal, as run
        # alone) and keep the own rows; costs a few extra query rows, and the kernel skips masked blocks.
        rows = rows.to(device)
        return _SpanPlan(own, rows, rows, None)
    # A long context before a short tail (a reranker's long query), or a stored one: the tail's queries alone,
    # every context key, then causal over the tail (the lower-right causal mask).
    mask = torch.ones(length, shared + length, dtype=torch.bool).tril(shared)[None, None]
    return _SpanPlan(own, rows.to(device), None, mask.to(device))


@dataclass(frozen=True)
class _KernelLayout:
    """The compiled kernel's view of a pass (see `cpu_kernels.cpp`): each sequence's query rows and key segments
    (in the key space), and the same segments with one query per sequence (the pooled rows of the last layer)."""

    spans: torch.Tensor
    last: torch.Tensor
    segments: torch.Tensor


def _kernel_layout(spans: list[Span], stored: int) -> _KernelLayout:
    rows: list[tuple[int, int, int, int]] = []
    last: list[tuple[int, int, int, int]] = []
    segments: list[list[int]] = []
    for index, span in enumerate(spans):
        context, start = _key_ranges(span, stored)
        first = len(segments)
        for begin, end in (*context, (start, span.end)):
            if len(segments) > first and sum(segments[-1]) == begin:  # continues the previous segment
                segments[-1][1] += end - begin
            elif end > begin:
                segments.append([begin, end - begin])
        rows.append((start - stored, span.end - start, first, len(segments)))
        last.append((index, 1, first, len(segments)))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    return _KernelLayout(as_tensor(rows), as_tensor(last), as_tensor(segments))


@dataclass
class StoredPrefix:
    """A shared prefix's token ids and, per decoder layer, its keys and values."""

    ids: np.ndarray
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]


class PrefixStore:
    """Shared prefixes kept across forward passes: a request's pairs (the judge's prompt and the query) span
    several batches, and each batch after the first reads the prefix instead of computing it again. Same tokens
    at the same positions give the same keys and values, so each result is still its sequence's alone. Used on
    the device thread only."""

    def __init__(self, capacity: int = STORED_PREFIXES, tokens: int = STORED_TOKENS) -> None:
        self.capacity, self.tokens = capacity, tokens
        self._entries: OrderedDict[bytes, StoredPrefix] = OrderedDict()

    def longest(self, ids: np.ndarray) -> StoredPrefix | None:
        """The longest stored prefix `ids` begins with, leaving it at least one token of its own."""
        best: StoredPrefix | None = None
        for key, entry in self._entries.items():
            size = len(entry.ids)
            if size < len(ids) and (best is None or size > len(best.ids)) and ids[:size].tobytes() == key:
                best = entry
        if best is not None:
            self._entries.move_to_end(best.ids.tobytes())
        return best

    def add(self, entry: StoredPrefix) -> None:
        if len(entry.ids) > self.tokens:
            return
        self._entries[entry.ids.tobytes()] = entry
        self._entries.move_to_end(entry.ids.tobytes())
        while len(self._entries) > self.capacity or sum(len(e.ids) for e in self._entries.values()) > self.tokens:
            self._entries.popitem(last=False)


def prefix_to_keep(spans: list[Span]) -> int:
    """How many of the first sequence's tokens every later sequence sharing a long start with it shares (0: none,
    or too few to keep): the part most likely to begin the next passes too (a query, not one document's start)."""
    first_end = spans[0].end
    shared = [
        min(span.context[0][1], first_end)
        for span in spans[1:]
        if span.context and span.context[0][0] == 0 and span.context[0][1] >= MIN_STORED_TOKENS
    ]
    size = min(shared) if shared else 0
    return size if size <= STORED_TOKENS else 0


@contextmanager
def packed_sequences(
    spans: list[Span],
    device: torch.device | str = "cpu",
    *,
    stored: StoredPrefix | None = None,
    keep: StoredPrefix | None = None,
) -> Iterator[None]:
    """Within this block, causal attention on this thread treats the row as these sequences. With `stored`, the
    row lacks the first sequence's first `len(stored.ids)` tokens and reads their keys and values from it; with
    `keep`, each layer's keys and values of the first `len(keep.ids)` tokens are kept into it."""
    _layout.pass_ = _Pass(spans, torch.device(device), len(stored.ids) if stored is not None else 0)
    _layout.stored, _layout.keep = stored, keep
    try:
        yield
    finally:
        _layout.pass_ = _layout.stored = _layout.keep = None


class _Pass:
    """The running packed pass: its sequences, and how attention reads them (worked out once, on first use)."""

    def __init__(self, spans: list[Span], device: torch.device, stored: int) -> None:
        self.spans, self.device, self.stored = spans, device, stored
        self.kernels = cpu_kernels.active()  # looked up once per pass, read by every layer
        self._plans: list[_SpanPlan] | None = None
        self._kernel: _KernelLayout | None = None

    def kernel_layout(self, query: torch.Tensor) -> _KernelLayout | None:
        """The compiled kernel's layout when it serves these queries (float32 on the CPU), else None."""
        if query.dtype != torch.float32 or query.device.type != "cpu" or self.kernels is None:
            return None
        if self._kernel is None:
            self._kernel = _kernel_layout(self.spans, self.stored)
        return self._kernel

    def plans(self) -> list[_SpanPlan]:
        if self._plans is None:
            self._plans = [_plan(span, self.device, self.stored) for span in self.spans]
        return self._plans


def _current() -> _Pass | None:
    running: _Pass | None = getattr(_layout, "pass_", None)
    return running


def in_packed_pass() -> bool:
    """Whether this thread is inside `packed_sequences`."""
    return _current() is not None


def _rows_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """(1, heads, rows, head_dim) as (rows, heads, head_dim) views, the kernel's layout."""
    return [tensor[0].transpose(0, 1) for tensor in tensors]


def _key_space(layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This layer's keys and values addressed as the plans address them (a stored prefix first); kept if asked."""
    keep: StoredPrefix | None = getattr(_layout, "keep", None)
    if keep is not None:
        size = len(keep.ids)
        keep.layers[layer] = (key[:, :, :size].clone(), value[:, :, :size].clone())
    stored: StoredPrefix | None = getattr(_layout, "stored", None)
    if stored is None:
        return key, value
    old_key, old_value = stored.layers[layer]
    return torch.cat([old_key, key], dim=2), torch.cat([old_value, value], dim=2)


def _read(tensor: torch.Tensor, where: slice | torch.Tensor) -> torch.Tensor:
    return tensor[:, :, where] if isinstance(where, slice) else tensor.index_select(2, where)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: Any) -> Any:
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )


def _attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    running = _current()
    if running is None or not getattr(module, "is_causal", False):
        output: tuple[torch.Tensor, None] = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        return output
    scale = kwargs.get("scaling")
    keys, values = _key_space(module.layer_idx, key, value)
    layout = running.kernel_layout(query)
    if layout is not None:  # (batch, rows, heads, head_dim), as transformers' attention modules read it back
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        queries, keys, values = _rows_first(query, keys, values)
        rows = cpu_kernels.attend(running.kernels, queries, keys, values, layout.spans, layout.segments, scale)
        return rows.unsqueeze(0), None
    output_rows = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for plan in running.plans():
        queries = query[:, :, plan.own] if plan.queries is None else query.index_select(2, plan.queries)
        part = _sdpa(queries, _read(keys, plan.keys), _read(values, plan.keys), plan.mask, scale)
        length = plan.own.stop - plan.own.start
        output_rows[:, plan.own] = part[:, :, part.shape[2] - length :].transpose(1, 2)
    return output_rows, None


def last_query_attention(
    layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor | None:
    """Attention for each sequence's last token alone (`query` holds one row per sequence, in span order) over all
    of its keys, in the running packed pass; None outside one. Returns (batch, sequences, heads, head_dim)."""
    running = _current()
    if running is None:
        return None
    keys, values = _key_space(layer, key, value)
    layout = running.kernel_layout(query)
    if layout is not None:
        queries, keys, values = _rows_first(query, keys, values)
        return cpu_kernels.attend(
            running.kernels, queries, keys, values, layout.last, layout.segments, scale
        ).unsqueeze(0)
    parts = []
    for index, plan in enumerate(running.plans()):
        # the last token sees every key of its sequence: no mask
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, index : index + 1],
                _read(keys, plan.keys),
                _read(values, plan.keys),
                scale=scale,
                enable_gqa=True,
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
    sequences: Sequence[Sequence[int] | np.ndarray],
    *,
    unshareable: Sequence[int] = (),
    min_shared: int = MIN_SHARED_TOKENS,
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
