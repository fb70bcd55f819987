"""The CPU kernels' stand-ins give what the modules they replace give."""

from __future__ import annotations

import pytest
import torch

from embedding_api.families import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.can_pack(torch.nn.Linear(2, 2)), reason="PyTorch without oneDNN")


def test_a_packed_linear_equals_the_linear() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    rows = torch.randn(37, 64)
    with torch.inference_mode():
        expected = linear(rows)
        packed = cpu_linear.PackedLinear(linear)
        torch.testing.assert_close(packed(rows), expected, atol=1e-5, rtol=1e-5)


def test_a_patch_convolution_runs_as_a_product_per_patch_with_the_convolutions_result() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 32, kernel_size=(2, 16, 16), stride=(2, 16, 16), bias=True)
    patches = torch.randn(50, 3, 2, 16, 16)  # one patch per input, as Qwen's vision tower feeds it
    with torch.inference_mode():
        expected = conv(patches)
        swapped = cpu_linear.PatchLinear(conv)
        result = swapped(patches)
    assert result.shape == expected.shape == (50, 32, 1, 1, 1)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
    assert swapped.weight.dtype == torch.float32  # what the vision tower reads to cast its input


def test_other_inputs_go_through_the_convolution_itself() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    image = torch.randn(2, 3, 32, 32)  # a whole image: many patches per input (SigLIP's layout)
    with torch.inference_mode():
        torch.testing.assert_close(cpu_linear.PatchLinear(conv)(image), conv(image), atol=0, rtol=0)


def test_only_linears_and_patch_convolutions_are_swapped() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4),
        torch.nn.Conv3d(3, 4, kernel_size=2, stride=2),
        torch.nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=1),  # overlapping windows: not a patch embedding
    )
    assert cpu_linear.pack_linears(model) == 2
    assert [type(child).__name__ for child in model] == ["PackedLinear", "PatchLinear", "Conv2d"]
