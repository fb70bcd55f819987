"""Giving freed memory back to the system after big media work.

glibc keeps freed heap pages for reuse, so after decoding and resizing large frames the process RSS would stay
near its peak; `malloc_trim` hands them back. Elsewhere (no glibc) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# Work on more pixels than this (decoded or sent to the model) frees enough memory to be worth handing back.
BIG_PIXELS = 4_000_000


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (a few milliseconds; call it off the event loop)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
