"""Shared prefixes in a packed row: which tokens are kept once, and where each sequence reads them back."""

from __future__ import annotations

import torch

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
