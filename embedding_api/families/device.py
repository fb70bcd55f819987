"""Choosing the torch device and dtype from settings, and keeping the CPU's parallel work on one thread."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type != "cuda":
        return device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} was asked for but CUDA is not available{shown}; set DEVICE=cpu or auto.")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(
            f"DEVICE={setting} was asked for but this machine shows {count} CUDA device(s){shown}, "
            f"numbered from cuda:0; set DEVICE=cuda, auto or a lower cuda:N."
        )
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA (the recommended fast path) and float32 on CPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def best_attention(device: torch.device) -> str:
    """flash-attention 2 when installed on CUDA, else PyTorch's sdpa; on the CPU, padding-free batches
    (`families.packing`: measured faster than padded batches and than one sequence at a time there)."""
    if device.type == "cpu":
        from embedding_api.families import packing

        return packing.register()
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def is_out_of_memory(exc: BaseException) -> bool:
    """The device ran out of memory (CUDA's own error, or an allocator's message on other devices)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_device_cache() -> None:
    """Give cached device memory back after an out-of-memory error, so a smaller retry can fit."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch itself loaded (GNU libgomp beside libtorch on Linux wheels; other packages may load
    copies of their own, which torch's threads never read); None where there is none to find. The maps list real
    paths, so torch's is resolved too: a virtual environment reached through a symlink still finds it."""
    torch_libs = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line and "/" in line}
    except OSError:
        return None
    ours = sorted(path for path in paths if os.path.dirname(os.path.realpath(path)) == torch_libs)
    return ctypes.CDLL(ours[0]) if ours else None


def serial_cpu_thread() -> None:
    """Make the calling thread run torch's CPU ops on itself alone (a thread-pool initializer).

    libgomp gives every thread that starts parallel work a team of its own, and once it manages more threads than
    there are cores it cuts every team's spin-wait to almost nothing: the device thread's forward pass then wakes
    its workers from sleep at each op (measured 34 -> 48 ms for one short text on 2 cores, after one helper thread
    had normalised a large image). Preparation and collation threads therefore stay serial: their parallelism is
    several items at once, and the cores' parallel teams belong to the forward pass."""
    torch.get_num_threads()  # torch sets the thread's OpenMP width the first time it asks; set ours after that
    runtime = _openmp()
    if runtime is not None:
        runtime.omp_set_num_threads(1)


def cpu_thread_setup(device: str) -> Callable[[], None] | None:
    """What helper threads of a model on `device` run first: serial on the CPU, nothing to do on a GPU."""
    return serial_cpu_thread if torch.device(device).type == "cpu" else None
