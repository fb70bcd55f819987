"""The compiled CPU kernels against PyTorch: attention against SDPA sequence by sequence on the layouts packed passes
give it; the fused RMSNorm and SiLU-and-multiply against the decoder modules they replace."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from embedding_api.families import cpu_fusion, cpu_kernels, packing
from embedding_api.families.base import Span

F = torch.nn.functional


@pytest.fixture(scope="module")
def op() -> Any:
    ops = cpu_kernels.library()
    assert ops is not None, "the kernels must build on a machine with a C++ compiler (the test machines have one)"
    return ops


def reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: list[tuple[int, int, list[tuple[int, int]]]]
) -> torch.Tensor:
    """SDPA per sequence: its queries over its segments' keys laid end to end, causal aligned to the last key."""
    out = torch.zeros_like(query)
    for start, count, segments in spans:
        keys = torch.cat([key[a : a + n] for a, n in segments]).transpose(0, 1)[None]
        values = torch.cat([value[a : a + n] for a, n in segments]).transpose(0, 1)[None]
        total = keys.shape[2]
        mask = torch.ones(count, total, dtype=torch.bool).tril(total - count)
        rows = query[start : start + count].transpose(0, 1)[None]
        out[start : start + count] = F.scaled_dot_product_attention(
            rows, keys, values, attn_mask=mask, enable_gqa=True
        )[0].transpose(0, 1)
    return out


def run(op: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: list[Any]) -> torch.Tensor:
    rows: list[tuple[int, int, int, int]] = []
    segments: list[tuple[int, int]] = []
    for start, count, parts in spans:
        rows.append((start, count, len(segments), len(segments) + len(parts)))
        segments.extend(parts)
    layout = torch.tensor(rows, dtype=torch.int64), torch.tensor(segments, dtype=torch.int64)
    return cpu_kernels.attend(op, query, key, value, *layout, query.shape[-1] ** -0.5)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(8, 4, 64), (4, 4, 32), (8, 2, 80), (2, 1, 128)])
def test_packed_sequences_equal_sdpa_one_by_one(op: Any, heads: int, kv_heads: int, head_dim: int) -> None:
    torch.manual_seed(heads * head_dim)
    lengths = [1, 5, 63, 64, 65, 130, 700]
    total = sum(lengths)
    query, key, value = (torch.randn(total, n, head_dim) for n in (heads, kv_heads, kv_heads))
    spans, start = [], 0
    for length in lengths:
        spans.append((start, length, [(start, length)]))
        start += length
    got = run(op, query, key, value, spans)
    assert (got - reference(query, key, value, spans)).abs().max().item() < 2e-5


def test_shared_prefixes_and_a_stored_prefix_read_through_segments(op: Any) -> None:
    """Keys in several pieces (a context shared with an earlier sequence, then the sequence's own), and fewer queries
    than keys (a stored prefix's keys come first)."""
    torch.manual_seed(1)
    query = torch.randn(300, 8, 64)
    key, value = torch.randn(340, 4, 64), torch.randn(340, 4, 64)
    spans = [
        (0, 100, [(0, 140)]),  # a stored prefix of 40 keys, then its own 100
        (100, 50, [(0, 60), (140, 50)]),  # shares the first 60 keys, then its own
        (150, 150, [(0, 20), (40, 10), (190, 150)]),  # a context in two pieces
    ]
    got = run(op, query, key, value, spans)
    assert (got - reference(query, key, value, spans)).abs().max().item() < 2e-5


def test_strided_views_as_transformers_hands_them_over(op: Any) -> None:
    torch.manual_seed(2)
    query = torch.randn(8, 90, 64).transpose(0, 1)  # heads-major memory read rows first
    key = torch.randn(90, 8, 64)[:, ::2]  # every other head: a head stride of two heads
    value = torch.randn(4, 90, 64).transpose(0, 1)
    assert not query.is_contiguous() and not key.is_contiguous()
    spans = [(0, 40, [(0, 40)]), (40, 50, [(40, 50)])]
    got = run(op, query, key, value, spans)
    assert (got - reference(query, key, value, spans)).abs().max().item() < 2e-5


def test_one_query_per_sequence_sees_all_its_keys(op: Any) -> None:
    torch.manual_seed(3)
    key, value = torch.randn(200, 4, 64), torch.randn(200, 4, 64)
    query = torch.randn(2, 8, 64)
    spans = [(0, 1, [(0, 120)]), (1, 1, [(0, 30), (120, 80)])]
    got = run(op, query, key, value, spans)
    assert (got - reference(query, key, value, spans)).abs().max().item() < 2e-5


@pytest.mark.parametrize(
    "spans",
    [
        [(0, 5, [(0, 4)])],  # fewer keys than queries
        [(0, 5, [(0, 500)])],  # keys past the tensor
        [(8, 5, [(0, 5)])],  # queries past the tensor
    ],
)
def test_layouts_out_of_range_are_refused(op: Any, spans: list[Any]) -> None:
    query, key, value = torch.randn(10, 2, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)
    with pytest.raises(RuntimeError, match=r"out of range|fewer keys"):
        run(op, query, key, value, spans)


def test_other_dtypes_are_refused(op: Any) -> None:
    query = torch.randn(4, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32"):
        run(op, query, query, query, [(0, 4, [(0, 4)])])


def test_the_packed_pass_reads_the_same_with_the_kernel_and_with_sdpa() -> None:
    """The model-facing path: a packed pass with shared contexts, through the kernel and through SDPA."""
    torch.manual_seed(4)
    spans = [Span(0, 50), Span(50, 80, ((0, 20),)), Span(80, 130, ((0, 20),))]
    query, key, value = torch.randn(1, 8, 130, 64), torch.randn(1, 4, 130, 64), torch.randn(1, 4, 130, 64)
    module = type("Layer", (), {"is_causal": True, "layer_idx": 0})()
    results = []
    for compiled in (True, False):
        cpu_kernels.choose(compiled)
        with packing.packed_sequences(spans):
            results.append(packing._attention(module, query, key, value, None, scaling=0.125)[0])
    cpu_kernels.choose(True)
    assert (results[0] - results[1]).abs().max().item() < 2e-5


def test_a_machine_that_cannot_build_it_falls_back_to_sdpa(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="embedding_api.families"):
        assert cpu_kernels.library() is None
        assert cpu_kernels.library() is None  # tried once: no second build
        assert cpu_kernels.active() is None
    warnings = [r for r in caplog.records if "unavailable, using PyTorch" in r.getMessage()]
    assert len(warnings) == 1 and "error" in warnings[0].getMessage().lower()


def qwen3_decoder_parts() -> tuple[torch.nn.Module, torch.nn.Module]:
    """An RMSNorm and a gated MLP as transformers builds them for Qwen3 (random weights)."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

    config = Qwen3Config(hidden_size=96, intermediate_size=200, hidden_act="silu")
    norm = Qwen3RMSNorm(96, eps=1e-6)
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    return norm, Qwen3MLP(config)


def test_fused_rms_norm_and_gated_mlp_equal_the_modules_they_replace(op: Any) -> None:
    torch.manual_seed(5)
    norm, mlp = qwen3_decoder_parts()
    holder = torch.nn.Sequential(norm, mlp)
    hidden = torch.randn(3, 37, 96) * 4
    expected_norm, expected_mlp = norm(hidden), mlp(hidden)
    assert cpu_fusion.fuse(holder, op) == 2
    assert isinstance(holder[0], cpu_fusion.FusedRMSNorm) and isinstance(holder[1], cpu_fusion.FusedGatedMLP)
    assert (holder[0](hidden) - expected_norm).abs().max().item() < 1e-5
    assert (holder[1](hidden) - expected_mlp).abs().max().item() < 1e-5
    # a transposed (non-contiguous) input and a head-sized norm, as q_norm / k_norm see them
    heads = torch.randn(37, 4, 96).transpose(0, 1)
    assert (holder[0](heads) - norm(heads)).abs().max().item() < 1e-5
    assert cpu_fusion.fuse(holder, op) == 0  # already fused


def test_other_dtypes_go_through_the_original_modules(op: Any) -> None:
    norm, mlp = qwen3_decoder_parts()
    norm, mlp = norm.to(torch.bfloat16), mlp.to(torch.bfloat16)
    holder = torch.nn.Sequential(norm, mlp)
    hidden = torch.randn(2, 5, 96, dtype=torch.bfloat16)
    expected = mlp(norm(hidden))
    cpu_fusion.fuse(holder, op)
    assert torch.equal(holder(hidden), expected)


def test_nothing_is_fused_without_the_kernels() -> None:
    norm, mlp = qwen3_decoder_parts()
    holder = torch.nn.Sequential(norm, mlp)
    assert cpu_fusion.fuse(holder, None) == 0
    assert holder[0] is norm and holder[1] is mlp


def transformers_rotary() -> tuple[Any, Any]:
    """transformers' own rotary functions for Qwen3-VL text and vision."""
    from transformers.models.qwen3_vl import modeling_qwen3_vl as modeling

    return modeling.apply_rotary_pos_emb, modeling.apply_rotary_pos_emb_vision


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "tokens"), [(8, 4, 64, 300), (16, 8, 128, 7), (2, 1, 80, 1)])
def test_fused_text_rotary_equals_transformers(op: Any, heads: int, kv_heads: int, head_dim: int, tokens: int) -> None:
    torch.manual_seed(heads + tokens)
    original, _ = transformers_rotary()
    # as the attention code hands them over: (1, heads, T, D) views of the projections' (T, heads, D) rows
    q = torch.randn(1, tokens, heads, head_dim).transpose(1, 2)
    k = torch.randn(1, tokens, kv_heads, head_dim).transpose(1, 2)
    angles = torch.rand(1, tokens, head_dim) * 50
    cos, sin = angles.cos(), angles.sin()
    fused_q, fused_k = cpu_fusion.fused_text_rotary(original)(q, k, cos, sin)
    expected_q, expected_k = original(q, k, cos, sin)
    assert fused_q.shape == expected_q.shape and fused_k.shape == expected_k.shape
    assert (fused_q - expected_q).abs().max().item() < 1e-6
    assert (fused_k - expected_k).abs().max().item() < 1e-6


def test_fused_vision_rotary_equals_transformers(op: Any) -> None:
    torch.manual_seed(3)
    _, original = transformers_rotary()
    q, k, _ = torch.randn(96, 3, 4, 32).permute(1, 0, 2, 3).unbind(0)  # strided, as the vision blocks split qkv
    angles = torch.rand(96, 32) * 20
    fused = cpu_fusion.fused_vision_rotary(original)(q, k, angles.cos(), angles.sin())
    expected = original(q, k, angles.cos(), angles.sin())
    for got, want in zip(fused, expected, strict=True):
        assert got.shape == want.shape and (got - want).abs().max().item() < 1e-6


def test_rotary_inputs_the_kernel_does_not_take_go_through_transformers(op: Any) -> None:
    original, _ = transformers_rotary()
    fused = cpu_fusion.fused_text_rotary(original)
    angles = torch.rand(2, 9, 16)
    cases = [
        (torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), angles.cos(), angles.sin(), 1),  # two rows
        (torch.randn(1, 9, 4, 16), torch.randn(1, 9, 2, 16), angles[:1].cos(), angles[:1].sin(), 2),  # other layout
        (
            *(t.bfloat16() for t in (torch.randn(1, 4, 9, 16), torch.randn(1, 2, 9, 16))),
            angles[:1].cos().bfloat16(),
            angles[:1].sin().bfloat16(),
            1,
        ),
    ]
    for q, k, cos, sin, unsqueeze in cases:
        for got, want in zip(fused(q, k, cos, sin, unsqueeze), original(q, k, cos, sin, unsqueeze), strict=True):
            assert torch.equal(got, want)
    calls: list[int] = []

    def counting(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    q, k, cos, sin, _ = cases[0]
    try:
        cpu_kernels.choose(False)  # CPU_KERNELS=pytorch: transformers' rotary serves
        cpu_fusion.fused_text_rotary(counting)(q[:1], k[:1], cos[:1], sin[:1])
    finally:
        cpu_kernels.choose(True)
    cpu_fusion.fused_text_rotary(counting)(q[:1], k[:1], cos[:1], sin[:1])
    assert calls == [1]


def test_only_the_fused_models_attention_rotates_through_the_kernel(op: Any) -> None:
    from transformers import Qwen3Config
    from transformers.models.qwen3 import modeling_qwen3

    config = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, layer_types=None)
    config._attn_implementation = "sdpa"
    original_rotary = modeling_qwen3.apply_rotary_pos_emb
    fused, reference = (modeling_qwen3.Qwen3Attention(config, layer_idx=0) for _ in range(2))
    reference.load_state_dict(fused.state_dict())
    assert cpu_fusion.fuse(torch.nn.Sequential(fused), op) == 2  # q_norm and k_norm
    assert "forward" in vars(fused)  # and its forward now rotates through the kernel
    assert modeling_qwen3.apply_rotary_pos_emb is original_rotary  # transformers' module is left as it was
    assert "forward" not in vars(reference)
    cpu_fusion.fuse(torch.nn.Sequential(fused), op)
    hidden = torch.randn(1, 11, 64)
    angles = torch.rand(1, 11, 16) * 10
    calls: list[int] = []

    def counting(*args: Any) -> Any:
        calls.append(1)
        return original_rotary(*args)

    modeling_qwen3.apply_rotary_pos_emb = counting  # what the reference's forward reads
    try:
        with torch.inference_mode():
            expected = reference(hidden, (angles.cos(), angles.sin()), None)[0]
            got = fused(hidden, (angles.cos(), angles.sin()), None)[0]
    finally:
        modeling_qwen3.apply_rotary_pos_emb = original_rotary
    assert len(calls) == 1  # the reference only: the fused module reads its own copy
    assert (got - expected).abs().max().item() < 1e-5
