"""Assertions several test modules share."""

from __future__ import annotations

import re


def assert_one_sentence(message: str) -> None:
    """One line, one sentence, ending with a full stop."""
    assert "\n" not in message
    assert message.endswith(".")
    assert not re.search(r"[.!?]\s+[A-Z]", message), message
