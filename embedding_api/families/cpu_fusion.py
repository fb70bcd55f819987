"""A CPU model's RMSNorms, gated MLPs and rotary embeddings through the compiled one-pass kernels (`cpu_kernels`).

PyTorch's decoder code makes four passes over the activations for an RMSNorm (square, mean, scale, weight), two
for SiLU-and-multiply and six per tensor for a rotary embedding; on two cores these element-wise passes were a tenth
of a packed batch's time. What is swapped in computes the same formulas in one pass, in float32; any other input
goes through the original code.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch

from embedding_api.families import cpu_kernels

log = logging.getLogger("embedding_api.families")


class FusedRMSNorm(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """Wraps a decoder's RMSNorm (`weight`, `variance_epsilon`, over the last dimension)."""

    def __init__(self, norm: torch.nn.Module, ops: Any) -> None:
        super().__init__()
        self.norm, self._ops = norm, ops
        self.eps = float(norm.variance_epsilon)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.norm.weight
        if hidden.dtype != torch.float32 or weight.dtype != torch.float32 or hidden.device.type != "cpu":
            output: torch.Tensor = self.norm(hidden)
            return output
        fused: torch.Tensor = self._ops.rms_norm(hidden.contiguous(), weight, self.eps)
        return fused


class FusedGatedMLP(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """Wraps a SiLU-gated MLP (`down_proj(act_fn(gate_proj(x)) * up_proj(x))`)."""

    def __init__(self, mlp: torch.nn.Module, ops: Any) -> None:
        super().__init__()
        self.mlp, self._ops = mlp, ops

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mlp = self.mlp
        gate, up = mlp.gate_proj(hidden), mlp.up_proj(hidden)
        if gate.dtype == torch.float32 and gate.device.type == "cpu":
            product = self._ops.silu_and_mul(gate.contiguous(), up.contiguous())
        else:
            product = mlp.act_fn(gate) * up
        output: torch.Tensor = mlp.down_proj(product)
        return output


def _is_rms_norm(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


# PyTorch's SiLU and transformers' own (`ACT2FN["silu"]`, which calls `F.silu`)
_SILU_CLASSES = ("SiLU", "SiLUActivation")


def _is_silu_gated_mlp(module: torch.nn.Module) -> bool:
    return all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj")) and (
        type(getattr(module, "act_fn", None)).__name__ in _SILU_CLASSES
    )


Rotary = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# transformers' rotary functions, which the attention code reads as globals of its modeling module
_TEXT_ROTARY, _VISION_ROTARY = "apply_rotary_pos_emb", "apply_rotary_pos_emb_vision"


def _rotatable(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1 for t in tensors)


def fused_text_rotary(original: Rotary) -> Rotary:
    """`apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)` for one (1, heads, T, D) row through the kernel."""

    def apply_rotary_pos_emb(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = cpu_kernels.active()
        if (
            ops is None
            or unsqueeze_dim != 1
            or not _rotatable(q, k, cos, sin)
            or q.dim() != 4
            or q.shape[0] != 1
            or k.shape[0] != 1
            or cos.shape != (1, q.shape[2], q.shape[3])
            or k.shape[2:] != q.shape[2:]
            or sin.shape != cos.shape
        ):
            return original(q, k, cos, sin, unsqueeze_dim)
        cos, sin = cos[0].contiguous(), sin[0].contiguous()
        # (1, heads, T, D) <-> (T, heads, D): the kernel's layout, the one the projections left in memory
        rotated = [ops.rotary(t[0].transpose(0, 1), cos, sin).transpose(0, 1)[None] for t in (q, k)]
        return rotated[0], rotated[1]

    return apply_rotary_pos_emb


def fused_vision_rotary(original: Rotary) -> Rotary:
    """`apply_rotary_pos_emb_vision(q, k, cos, sin)` for (T, heads, D) patches through the kernel."""

    def apply_rotary_pos_emb_vision(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = cpu_kernels.active()
        if (
            ops is None
            or not _rotatable(q, k, cos, sin)
            or q.dim() != 3
            or k.shape[0] != q.shape[0]
            or cos.shape != (q.shape[0], q.shape[2])
            or sin.shape != cos.shape
        ):
            return original(q, k, cos, sin)
        cos, sin = cos.contiguous(), sin.contiguous()
        return ops.rotary(q, cos, sin), ops.rotary(k, cos, sin)

    return apply_rotary_pos_emb_vision


def _with_fused_rotary(forward: Callable[..., Any]) -> Callable[..., Any] | None:
    """The attention `forward` reading the fused rotary functions in place of its module's globals, or None if it
    calls neither. The function is copied with its own globals, so only the modules given it change: a reference
    model in the same process keeps transformers' own code."""
    names = set(forward.__code__.co_names)
    swaps = {
        name: wrap(forward.__globals__[name])
        for name, wrap in ((_TEXT_ROTARY, fused_text_rotary), (_VISION_ROTARY, fused_vision_rotary))
        if name in names and callable(forward.__globals__.get(name))
    }
    if not swaps:
        return None
    copied = types.FunctionType(
        forward.__code__, {**forward.__globals__, **swaps}, forward.__name__, forward.__defaults__, forward.__closure__
    )
    copied.__kwdefaults__ = forward.__kwdefaults__
    return copied


def _fuse_rotary(model: torch.nn.Module) -> int:
    """Give the model's attention modules a forward that rotates through the kernel; returns how many. Each call
    checks `cpu_kernels.active()`, so CPU_KERNELS=pytorch keeps transformers' rotary."""
    fused: dict[type, Callable[..., Any] | None] = {}
    count = 0
    for module in model.modules():
        kind = type(module)
        if "forward" in vars(module) or kind.forward is torch.nn.Module.forward:
            continue  # already given one, or a container
        if kind not in fused:
            fused[kind] = _with_fused_rotary(kind.forward)
        forward = fused[kind]
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


def fuse(model: torch.nn.Module, ops: Any) -> int:
    """Swap a CPU model's RMSNorms and SiLU-gated MLPs for the fused ones, and its rotary functions (idempotent);
    returns how many modules were swapped."""
    parameter = next(model.parameters(), None)
    if ops is None or parameter is None or parameter.device.type != "cpu":
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        if not isinstance(parent, FusedRMSNorm | FusedGatedMLP)
        for name, child in parent.named_children()
        if _is_rms_norm(child) or _is_silu_gated_mlp(child)
    ]
    for parent, name, child in targets:
        setattr(parent, name, FusedRMSNorm(child, ops) if _is_rms_norm(child) else FusedGatedMLP(child, ops))
    rotary = _fuse_rotary(model)
    log.debug("fused %d norms and MLPs, and the rotary embedding of %d attention modules", len(targets), rotary)
    return len(targets)
