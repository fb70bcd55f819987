"""Choosing the torch device and dtype from settings."""

from __future__ import annotations

import os

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
