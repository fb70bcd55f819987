"""The heap settings, seen from a fresh process the way glibc reports them (`mallinfo2`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap only")

# Allocates a 16 MiB block and reports whether glibc served it with its own mapping (mallinfo2's hblkhd).
_PROBE = """
import ctypes, json, sys
from embedding_api.engine import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
chosen = memory.keep_freed_memory_for_reuse() if sys.argv[1] == "tune" else []
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 * 1024 * 1024)
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(block))
print(json.dumps({"chosen": chosen, "mapped": mapped}))
"""


def _probe(mode: str, **env: str) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=environment, timeout=60, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_glibc_maps_a_big_block_afresh_by_default() -> None:
    # the control: without the settings a 16 MiB block is a fresh mapping (page faults on first touch)
    assert _probe("plain")["mapped"] >= 16 * 1024 * 1024


def test_big_blocks_come_from_the_reused_heap_once_set() -> None:
    result = _probe("tune")
    assert result["chosen"] == ["mmap_threshold", "trim_threshold"]
    assert result["mapped"] == 0


def test_an_operator_setting_of_glibc_wins() -> None:
    result = _probe("tune", MALLOC_MMAP_THRESHOLD_="131072")
    assert result["chosen"] == ["trim_threshold"]
    assert result["mapped"] >= 16 * 1024 * 1024


def test_a_glibc_tunable_wins_too() -> None:
    result = _probe("tune", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert result["chosen"] == ["mmap_threshold"]
    assert result["mapped"] == 0
