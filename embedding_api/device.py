"""Choosing the torch device and dtype from settings."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={setting} was asked for but CUDA is not available; set DEVICE=cpu or auto.")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA (the recommended fast path) and float32 on CPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def best_attention(device: torch.device) -> str:
    """flash-attention 2 when installed on CUDA, else PyTorch's sdpa."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"
