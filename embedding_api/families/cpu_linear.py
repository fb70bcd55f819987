"""Matrix products on the CPU through oneDNN with weights packed once at load.

PyTorch's default CPU linear calls MKL, which repacks the weight on every call and, on AMD CPUs, takes its AVX2
path. oneDNN's own kernels on a weight reordered once ran 1.2-1.3 x faster on the benchmark machine (fp32, 114 to
2048 rows), and a whole forward pass 1.2-1.4 x (`bench/vs_vllm.py`), with pooled vectors within 2e-7 of MKL's.
The original weights are released, so the model does not hold two copies.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """A drop-in for `nn.Linear` whose weight lives in oneDNN's blocked layout."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None), persistent=False)
        self.bias = linear.bias
        # an empty weight keeps `.weight.dtype` / `.device` questions answerable without a second copy of the data
        self.weight = torch.nn.Parameter(weight.new_empty(0), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = torch.ops.mkldnn._linear_pointwise(hidden, self.packed_weight, self.bias, "none", [], "")
        return output


class PatchLinear(torch.nn.Module):  # type: ignore[misc]  # torch is untyped for mypy here
    """A convolution whose kernel is its stride (a vision patch embedding), run as one matrix product per patch when
    each input is exactly one patch, as Qwen's vision towers feed it. oneDNN's direct 3-D convolution took 128 ms for
    8 images' 8,192 patches on the benchmark machine, 4 x the same product as a packed linear. Other inputs go
    through the convolution itself."""

    def __init__(self, conv: torch.nn.Conv2d | torch.nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv
        self.kernel = tuple(conv.kernel_size)
        weight = conv.weight.detach()
        linear = torch.nn.Linear(weight[0].numel(), conv.out_channels, bias=conv.bias is not None)
        linear.weight = torch.nn.Parameter(weight.reshape(conv.out_channels, -1), requires_grad=False)
        if conv.bias is not None:
            linear.bias = torch.nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.linear = PackedLinear(linear)

    @property
    def weight(self) -> torch.Tensor:
        weight: torch.Tensor = self.conv.weight
        return weight

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if tuple(patches.shape[2:]) != self.kernel:
            output: torch.Tensor = self.conv(patches)
            return output
        flat = self.linear(patches.reshape(patches.shape[0], -1))
        return flat.view(patches.shape[0], -1, *([1] * len(self.kernel)))


def _is_patch_conv(module: torch.nn.Module) -> bool:
    return (
        type(module) in (torch.nn.Conv2d, torch.nn.Conv3d)
        and tuple(module.kernel_size) == tuple(module.stride)
        and all(p == 0 for p in module.padding)
        and all(d == 1 for d in module.dilation)
        and module.groups == 1
    )


def can_pack(model: torch.nn.Module) -> bool:
    """Only CPU weights in a dtype oneDNN's linear takes, and only where PyTorch was built with oneDNN."""
    parameter = next(model.parameters())
    return (
        parameter.device.type == "cpu"
        and parameter.dtype in _PACKED_DTYPES
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_linears(model: torch.nn.Module) -> int:
    """Swap every `nn.Linear` of a CPU model for a `PackedLinear`, and every patch convolution for a `PatchLinear`;
    returns how many were swapped."""
    if not can_pack(model):
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear or _is_patch_conv(child)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child) if type(child) is torch.nn.Linear else PatchLinear(child))
    log.debug("packed %d linear layers for oneDNN", len(targets))
    return len(targets)
