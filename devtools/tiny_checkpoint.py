"""Build small, randomly initialised but structurally real Qwen3-VL checkpoints offline.

The checkpoint has the same layout as a published Qwen3-VL(-Embedding) model: a
``config.json`` with ``model_type`` ``qwen3_vl``, safetensors weights, a byte-level BPE
tokenizer with the Qwen special tokens, a Qwen2-VL image processor, a Qwen3-VL video
processor and a chat template that renders conversations like Qwen3-VL's.  The weights
are random, so the vectors mean nothing, but every code path (tokenizer, processor,
vision tower, deepstack, M-RoPE, loading) is the real one.  Used by tests and
benchmarks; nothing here needs the network.

Usage: ``python -m devtools.tiny_checkpoint OUT_DIR [--small] [--released]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

# set true in every checkpoint built here; the server reads it to say the weights are random
from embedding_api.families.loader import RANDOM_WEIGHTS_MARKER

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import Qwen2Tokenizer, Qwen3VLConfig

__all__ = [
    "CHAT_TEMPLATE",
    "RANDOM_WEIGHTS_MARKER",
    "SMALL_SPEC",
    "SPECIAL_TOKENS",
    "TinySpec",
    "build_tiny_checkpoint",
    "main",
    "real_2b_config",
]

# Special tokens in the order Qwen gives them ids (right after the BPE vocabulary).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Added, but not special (they survive ``skip_special_tokens``), as in Qwen's tokenizer.
PLAIN_ADDED_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>", "<think>", "</think>")

# Same pre-tokenisation as the Qwen2 tokenizer class, which rebuilds this pipeline on load.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_BPE_VOCAB_SIZE = 1024  # target; the small corpus may stop the trainer a little earlier

# Renders messages the way Qwen3-VL's template does for plain (tool-free) conversations.
CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is none -%}"
    "{%- else -%}"
    "{%- for part in content -%}"
    "{%- if part is string -%}{{- part -}}"
    "{%- elif part.type == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{{- render_content(message.content) -}}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# A small built-in English corpus for training the BPE merges (deterministic, offline).
_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A picture of a cat sitting on a red chair in the living room.",
    "Represent the user's input. Retrieve images or text relevant to the user's query.",
    "Find images that match the description given by the user.",
    "The weather today is sunny with a light breeze from the west.",
    "She walked to the market to buy fresh bread, apples, cheese and milk.",
    "Machine learning models turn text, images and videos into vectors.",
    "An embedding is a list of numbers that describes the meaning of an input.",
    "Search engines rank documents by how similar they are to the query.",
    "The train leaves the station at nine o'clock every morning.",
    "Children were playing football in the park after school.",
    "He read the book slowly, page by page, until the sun went down.",
    "Mountains covered with snow rise above the quiet green valley.",
    "Please describe what you see in this photo in one short sentence.",
    "The city library opens on Monday and closes early on Friday.",
    "Our team released a new version of the software last week.",
    "A small boat sails across the calm blue sea under a clear sky.",
    "Cooking dinner together is a nice way to end a long day.",
    "The museum shows paintings, sculptures and old maps of the world.",
    "Birds sing in the trees while the farmer works in the field.",
    "What is the capital of France? The capital of France is Paris.",
    "How many people live in the largest city of the country?",
    "This video shows a dog running on the beach and chasing a ball.",
    "The recipe needs two eggs, a cup of flour and some sugar.",
    "Scientists measure the temperature of the ocean every year.",
    "They opened the window to let the cool evening air inside.",
    "Numbers such as 1, 2, 3, 10, 42, 100 and 2025 appear in text too.",
    "The system must answer quickly, even when many users send requests.",
    "Good documentation helps new engineers understand the project.",
    "Each request contains one or more inputs that should be embedded.",
    "The model reads the whole conversation and returns the last hidden state.",
    "Vectors are normalised so that their length is exactly one.",
    "I would like a cup of tea with lemon, please.",
    "We're going to the cinema tonight; they've already bought the tickets.",
    "It's a beautiful day, isn't it? Let's go for a walk in the forest.",
    "The results were good, but the tests showed a few small problems.",
    "Write a short story about a robot who learns to paint flowers.",
    "Horses, cows, sheep and chickens live on the farm near the hills.",
    "The old bridge was repaired and painted white last summer.",
    "Students asked questions and the teacher answered each of them.",
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny checkpoint (text ``hidden_size`` is the embedding dimension)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    deepstack_indexes: tuple[int, ...] = (0,)
    extra_vocab_words: int = 0
    layout: str = "bare"
    seed: int = 0


SMALL_SPEC = TinySpec(
    hidden_size=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    intermediate_size=1536,
    vision_depth=4,
    vision_hidden_size=256,
    vision_heads=4,
    vision_intermediate_size=1024,
    deepstack_indexes=(1, 2),
)


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim // 2`` rotary frequencies into (t, h, w) like Qwen3-VL's [24, 20, 20]."""
    half = head_dim // 2
    hw = (half * 20) // 64
    return [half - 2 * hw, hw, hw]


def _set_byte_level_pipeline(tok: Tokenizer) -> None:
    """Give ``tok`` the Qwen2 normaliser, pre-tokeniser and decoder (NFC, regex split, bytes)."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()


def _train_bpe(extra_words: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on the built-in corpus; return (vocab, merges)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE())
    _set_byte_level_pipeline(tok)
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    model_json: dict[str, Any] = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model_json["vocab"])
    merges: list[tuple[str, str]] = []
    for merge in model_json["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges.append((str(left), str(right)))
    # Filler words: real (never produced) vocabulary entries that only move the later ids.
    for i in range(extra_words):
        vocab[f"\u0120xvocab{i:06d}"] = len(vocab)
    return vocab, merges


def _build_tokenizer(extra_words: int) -> Qwen2Tokenizer:
    """Byte-level BPE wrapped as the Qwen2 tokenizer class, with Qwen's added tokens."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(extra_words)
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    _set_byte_level_pipeline(backend)
    # Added one by one so that the ids follow the declared order exactly.
    for token in SPECIAL_TOKENS:
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
    for token in PLAIN_ADDED_TOKENS:
        backend.add_tokens([AddedToken(token, special=False, normalized=False)])

    options: dict[str, Any] = {
        "unk_token": None,  # byte-level BPE never needs one (Qwen's own tokenizer has none)
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 262144,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        # listed as the released tokenizer lists them: what `all_special_ids` returns (the reranker's cut keeps them)
        "extra_special_tokens": [token for token in SPECIAL_TOKENS if token != "<|endoftext|>"],
    }
    tokenizer = Qwen2Tokenizer(tokenizer_object=backend, **options)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _make_config(spec: TinySpec, token_ids: dict[str, int], vocab_size: int) -> Qwen3VLConfig:
    """Qwen3-VL config for ``spec`` with the tokenizer's special-token ids."""
    from transformers import Qwen3VLConfig

    text_config: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": _mrope_section(spec.head_dim),
            "mrope_interleaved": True,
        },
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "tie_word_embeddings": True,
    }
    vision_config: dict[str, Any] = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": spec.hidden_size,
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": list(spec.deepstack_indexes),
    }
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    return config


def real_2b_config() -> Qwen3VLConfig:
    """Config with the shape of Qwen3-VL-Embedding-2B (for benchmarks with random weights)."""
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "attention_bias": False,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 24,
            "hidden_size": 1024,
            "hidden_act": "gelu_pytorch_tanh",
            "intermediate_size": 4096,
            "num_heads": 16,
            "in_channels": 3,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 2048,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def build_tiny_checkpoint(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write a random-weight Qwen3-VL checkpoint plus processor files to ``out_dir``."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLModel,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    if spec.layout not in ("bare", "released"):
        raise ValueError(f"layout must be 'bare' or 'released', not {spec.layout!r}")
    if spec.head_dim % 4 or spec.vision_hidden_size % (4 * spec.vision_heads):
        raise ValueError("head_dim and the vision head size must be multiples of 4")
    if any(not 0 <= i < spec.vision_depth for i in spec.deepstack_indexes):
        raise ValueError("deepstack_indexes must be vision layer indexes")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(spec.extra_vocab_words)
    names = SPECIAL_TOKENS + PLAIN_ADDED_TOKENS
    token_ids: dict[str, int] = {}
    for name in names:
        token_id = tokenizer.convert_tokens_to_ids(name)
        if not isinstance(token_id, int):
            raise TypeError(f"tokenizer has no single id for {name}")
        token_ids[name] = token_id
    vocab_size = -(-len(tokenizer) // 64) * 64 + 64  # round up, with a little headroom
    config = _make_config(spec, token_ids, vocab_size)
    setattr(config, RANDOM_WEIGHTS_MARKER, True)  # saved into config.json with the rest

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 4 * 32 * 32, "longest_edge": 1800 * 32 * 32},
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )

    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model: torch.nn.Module
            if spec.layout == "released":
                config.architectures = ["Qwen3VLForConditionalGeneration"]
                model = Qwen3VLForConditionalGeneration(config)
            else:
                config.architectures = ["Qwen3VLModel"]
                model = Qwen3VLModel(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    for weights in out.glob("*.safetensors"):
        weights.chmod(0o644)  # readable like the other files (the writer makes it owner-only)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: build a checkpoint and print its path."""
    parser = argparse.ArgumentParser(description="Build a random-weight Qwen3-VL checkpoint.")
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument("--small", action="store_true", help="use SMALL_SPEC (for benchmarks)")
    parser.add_argument(
        "--released",
        action="store_true",
        help="save as Qwen3VLForConditionalGeneration, like the published checkpoints",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    args = parser.parse_args(argv)
    base = SMALL_SPEC if args.small else TinySpec()
    spec = replace(base, layout="released" if args.released else "bare", seed=args.seed)
    path = build_tiny_checkpoint(args.out_dir, spec)
    sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()
