"""A CPU decoder's RMSNorms and gated MLPs through the compiled one-pass kernels (`cpu_kernels`).

PyTorch's decoder code makes four passes over the activations for an RMSNorm (square, mean, scale, weight) and two
for SiLU-and-multiply; on two cores these element-wise passes were a tenth of a packed batch's time. The modules
swapped in compute the same formulas in one pass, in float32; any other input goes through the original module.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

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


def fuse(model: torch.nn.Module, ops: Any) -> int:
    """Swap a CPU model's RMSNorms and SiLU-gated MLPs for the fused ones (idempotent); returns how many."""
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
    log.debug("fused %d norms and MLPs", len(targets))
    return len(targets)
