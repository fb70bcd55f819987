"""The CPU's compiled kernels (`cpu_kernels.cpp`): built on this machine the first time a model loads on the CPU,
kept in a cache folder, and loaded from there afterwards.

- Causal attention for a packed row: on the benchmark machine about half the time PyTorch's CPU flash attention
  takes sequence by sequence (that kernel computes a causal sequence under 512 tokens as a full square).
- RMSNorm, SiLU-and-multiply and the rotary embedding in one pass each (`cpu_fusion` puts them in the models).

Where they cannot be built (no C++ compiler) attention stays on SDPA and the element-wise ops on PyTorch's own, and
one log line says why. Float32 only: other dtypes keep PyTorch's ops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("embedding_api.families")

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
BLOCK = 64  # query rows per task and head: measured best among 32 / 64 / 128 on the benchmark machine
# Compiler flags for the vector width PyTorch itself dispatches to on this CPU (its `Vectorized` needs the macro).
_VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}

_lock = threading.Lock()
_chosen = {"compiled": True}  # CPU_KERNELS, set when a model loads on the CPU (one setting per process)
_loaded: dict[str, Any] = {}  # "ops": the loaded operators' namespace, or None once a build failed


def cache_folder() -> Path:
    """Where built kernels are kept: $XDG_CACHE_HOME (else ~/.cache)/embedding_api/kernels."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedding_api" / "kernels"


def _build_key(capability: str) -> str:
    """One build per source text, PyTorch, Python and vector width."""
    text = SOURCE.read_bytes() + f"|{torch.__version__}|{sys.version_info[:2]}|{capability}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _put_ninja_on_path() -> None:
    """PyTorch's builder runs `ninja` from PATH; the ninja wheel in this environment may not be on it (a venv's
    Python started by its full path)."""
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [ninja.BIN_DIR, path]))


def _build() -> Any:
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp"]
    if capability in _VECTOR_FLAGS:
        flags += [*_VECTOR_FLAGS[capability], f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    folder = cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: a per-user temporary folder instead
        folder = Path(tempfile.gettempdir()) / f"embedding_api-kernels-{os.getuid()}"
    build = folder / _build_key(capability)
    library = build / "embedding_api_cpu.so"
    ready = build / "ready"  # written once a build has finished: another process may be building it right now
    if library.exists() and ready.exists():  # built before (the key names the source, flags and PyTorch)
        torch.ops.load_library(str(library))
        return torch.ops.embedding_api_cpu
    build.mkdir(parents=True, exist_ok=True)
    from torch.utils import cpp_extension

    log.info("building the CPU kernels in %s (once per machine, about 30 s)", build)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # its CUDA_HOME notice means nothing here
    _put_ninja_on_path()
    cpp_extension.load(
        name="embedding_api_cpu",
        sources=[str(SOURCE)],
        extra_cflags=flags,
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    ready.touch()
    return torch.ops.embedding_api_cpu


def library() -> Any:
    """The loaded operators (built first if needed), or None where they cannot be built; tried once per process."""
    if "ops" in _loaded:  # settled: read without the lock (every attention layer and rotary call asks)
        return _loaded["ops"]
    with _lock:
        if "ops" not in _loaded:
            try:
                _loaded["ops"] = _build()
            except Exception as exc:  # any build or load failure: SDPA serves instead
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                reason = next((line for line in lines if "error" in line.lower()), lines[-1]).strip()
                log.warning("CPU kernels unavailable, using PyTorch's own ops and SDPA (%s)", reason[:300])
                _loaded["ops"] = None
        return _loaded["ops"]


def choose(compiled: bool) -> None:
    """Whether CPU models use the compiled kernels (built now if needed) or PyTorch's own ops."""
    _chosen["compiled"] = compiled
    if compiled:
        library()


def active() -> Any:
    """The compiled kernels when chosen and built, else None (PyTorch's own ops serve)."""
    return library() if _chosen["compiled"] else None


def attend(
    ops: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    spans: torch.Tensor,
    segments: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of (rows, heads, head_dim) queries over (keys, kv_heads, head_dim) keys and values, laid
    out by `spans` and `segments` (see the kernel's header); returns (rows, heads, head_dim)."""
    out = query.new_empty(query.shape)
    ops.packed_causal_attention(query, key, value, spans, segments, out, scale, BLOCK)
    return out
