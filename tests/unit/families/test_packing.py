"""Shared prefixes in a packed row: which tokens are kept once, and where each sequence reads them back."""

from __future__ import annotations

import torch

from embedding_api.families import packing
from embedding_api.families.base import Span
from embedding_api.families.packing import sequence_bounds, share_prefixes

PROMPT = list(range(100, 110))  # ten tokens every sequence below starts with


def test_sequences_with_a_common_prompt_keep_it_once() -> None:
    layout = share_prefixes([[*PROMPT, 1, 2], [*PROMPT, 3], [*PROMPT, 4, 5, 6]])
    assert layout.spans == [
        Span(0, 12),
        Span(12, 13, ((0, 10),)),
        Span(13, 16, ((0, 10),)),
    ]
    # positions in the three full sequences laid end to end: 0-11, 12-22, 23-35
    assert layout.keep.tolist() == [*range(0, 12), 22, 33, 34, 35]


def test_a_longer_match_with_a_later_sequence_continues_its_context() -> None:
    query = [*PROMPT, 7, 7, 7, 7, 7, 7, 7, 7]  # 18 tokens
    layout = share_prefixes([[*PROMPT, 1], [*query, 2], [*query, 3, 4]])
    assert layout.spans[1] == Span(11, 20, ((0, 10),))
    # the third shares 18 tokens with the second: the second's context, then its first 8 own tokens
    assert layout.spans[2] == Span(20, 22, ((0, 10), (11, 19)))


def test_short_common_prefixes_are_not_shared() -> None:
    layout = share_prefixes([[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]])
    assert layout.spans == sequence_bounds([5, 5])
    assert layout.keep.tolist() == list(range(10))


def test_a_sequence_keeps_its_last_token_even_when_identical() -> None:
    layout = share_prefixes([[*PROMPT, 1], [*PROMPT, 1]])
    assert layout.spans[1] == Span(11, 12, ((0, 10),))


def test_sharing_stops_at_the_first_unshareable_token() -> None:
    image = 999
    layout = share_prefixes([[*PROMPT, 1, 2, image, 5], [*PROMPT, 1, 2, image, 6]], unshareable=[image])
    assert layout.spans[1] == Span(14, 16, ((0, 12),))  # its own tokens: the image and 6
    kept_tokens = torch.tensor([*PROMPT, 1, 2, image, 5, *PROMPT, 1, 2, image, 6])[layout.keep].tolist()
    assert kept_tokens.count(image) == 2  # every placeholder stays, in order


def test_only_recent_sequences_are_compared() -> None:
    other = [[k * 1000 + i for i in range(12)] for k in range(1, 6)]  # five unrelated sequences in between
    layout = share_prefixes([[*PROMPT, 1], *other, [*PROMPT, 2]])
    assert layout.spans[-1].context == ()


def test_the_prefix_kept_is_the_start_every_long_sharer_has_in_common() -> None:
    first = Span(0, 100)
    # a later pair shares 60 tokens (the query), another 64 (the query and its document's first words), a third
    # only 10 (the template: below what is worth keeping)
    spans = [first, Span(100, 120, ((0, 60),)), Span(120, 140, ((0, 64),)), Span(140, 150, ((0, 10),))]
    assert packing.prefix_to_keep(spans) == 60
    assert packing.prefix_to_keep([first, Span(100, 120, ((0, 10),))]) == 0  # too short to keep
    assert packing.prefix_to_keep([first]) == 0
    huge = packing.STORED_TOKENS + 1
    assert packing.prefix_to_keep([Span(0, huge + 5), Span(huge + 5, huge + 9, ((0, huge),))]) == 0  # memory bound


def test_a_stored_prefix_is_found_only_where_it_leaves_the_sequence_a_token_of_its_own() -> None:
    import numpy as np

    store = packing.PrefixStore(capacity=2)
    short = packing.StoredPrefix(np.arange(40), {0: (torch.zeros(1), torch.zeros(1))})
    long = packing.StoredPrefix(np.arange(50), {0: (torch.ones(1), torch.ones(1))})
    store.add(short)
    store.add(long)
    assert store.longest(np.arange(60)) is long  # the longest that fits
    assert store.longest(np.arange(50)) is short  # all 50 would leave nothing to compute
    assert store.longest(np.arange(1, 60)) is None  # a different start
    other = packing.StoredPrefix(np.arange(5, 45), {})
    store.add(other)  # over capacity: the least recently used goes (long; short was found last)
    assert store.longest(np.arange(60)) is short
    assert store.longest(np.arange(5, 60)) is other


def test_the_store_keeps_its_tokens_within_its_bound() -> None:
    import numpy as np

    store = packing.PrefixStore(capacity=8, tokens=100)
    store.add(packing.StoredPrefix(np.arange(101), {}))  # alone over the bound: not kept
    assert store.longest(np.arange(200)) is None
    first, second = packing.StoredPrefix(np.arange(60), {}), packing.StoredPrefix(np.arange(1, 51), {})
    store.add(first)
    store.add(second)  # 110 tokens together: the older goes
    assert store.longest(np.arange(100)) is None and store.longest(np.arange(1, 100)) is second
