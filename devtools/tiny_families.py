"""Tiny random checkpoints of the other families, built offline like `tiny_checkpoint` (the tokenizer is the same
byte-level BPE trained on a built-in corpus):

- `qwen3_embedding`: a Qwen3 decoder saved as sentence-transformers saves Qwen3-Embedding (Transformer module,
  last-token Pooling, Normalize; the `query` prompt; a tokenizer that appends its end-of-text token);
- `causal_lm`: a Qwen3 causal LM (for the hidden-state embedder);
- `siglip` / `siglip2`: dual encoders with their image processor (FixRes 32x32 / NaFlex at most 16 patches).

Usage: ``python -m devtools.tiny_families OUT_DIR`` writes all four into OUT_DIR/<name>.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from devtools.tiny_checkpoint import _build_tokenizer
from embedding_api.families.loader import RANDOM_WEIGHTS_MARKER

QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
EOS = "<|endoftext|>"


def _seeded(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.random.fork_rng(devices=[])


def _text_tokenizer(append_eos: bool) -> Any:
    from tokenizers.processors import TemplateProcessing

    tokenizer = _build_tokenizer(0)
    tokenizer.chat_template = None
    if append_eos:  # as Qwen3-Embedding's released tokenizer: every text ends with <|endoftext|>
        eos_id = tokenizer.convert_tokens_to_ids(EOS)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"$A:0 {EOS}:0", pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1", special_tokens=[(EOS, eos_id)]
        )
    tokenizer.pad_token = EOS
    return tokenizer


def _siglip2_tokenizer() -> Any:
    """SigLIP2's own tokenizer class (lowercase, `▁` for spaces, byte fallback), on a character vocabulary."""
    import string

    from transformers import Siglip2Tokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁" + string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    return Siglip2Tokenizer(vocab=vocab, merges=[])


def _qwen3_config(vocab: int, layers: int = 2) -> Any:
    from transformers import Qwen3Config

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    setattr(config, RANDOM_WEIGHTS_MARKER, True)
    return config


def _vocab_size(tokenizer: Any) -> int:
    return -(-len(tokenizer) // 64) * 64 + 64


def build_qwen3_embedding(out_dir: str | Path, seed: int = 1, *, bench: bool = False) -> Path:
    """A Qwen3-Embedding-shaped checkpoint with the sentence-transformers files the released models carry (the
    layout sentence-transformers 3 to 6 all read). `bench`: 512 hidden, 8 layers, for benchmarks."""
    import json

    from transformers import Qwen3Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _text_tokenizer(append_eos=True)
    tokenizer.padding_side = "left"  # as the released tokenizer
    config = _qwen3_config(_vocab_size(tokenizer), layers=8 if bench else 2)
    if bench:
        config.hidden_size, config.intermediate_size = 512, 1536
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 64
    config.architectures = ["Qwen3Model"]
    with _seeded(seed):
        model = Qwen3Model(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": QWEN3_QUERY_PROMPT, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    }
    for name, content in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content, indent=2), encoding="utf-8")
    (out / "2_Normalize").mkdir(exist_ok=True)
    return out


def build_causal_lm(out_dir: str | Path, seed: int = 2, layers: int = 3) -> Path:
    """A Qwen3 causal LM (the hidden-state embedder reads one of its layers)."""
    from transformers import Qwen3ForCausalLM

    out = Path(out_dir)
    tokenizer = _text_tokenizer(append_eos=False)
    config = _qwen3_config(_vocab_size(tokenizer), layers=layers)
    config.architectures = ["Qwen3ForCausalLM"]
    with _seeded(seed):
        model = Qwen3ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_siglip(out_dir: str | Path, *, naflex: bool = False, seed: int = 3) -> Path:
    """A SigLIP (FixRes, 32x32 images) or SigLIP2 (NaFlex, at most 16 patches of 16 pixels) checkpoint."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    out = Path(out_dir)
    tokenizer = _text_tokenizer(append_eos=False)
    vocab = _vocab_size(tokenizer)
    text: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.pad_token_id,
    }
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 16,
    }
    model: Any
    if naflex:
        tokenizer = _siglip2_tokenizer()
        text.update(pad_token_id=0, bos_token_id=2, eos_token_id=1)
        vision["num_patches"] = 16
        config: Any = Siglip2Config(text_config=text, vision_config=vision)
        image_processor: Any = Siglip2ImageProcessor(patch_size=16, max_num_patches=16)
        processor: Any = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
        config.architectures = ["Siglip2Model"]
        setattr(config, RANDOM_WEIGHTS_MARKER, True)
        with _seeded(seed):
            model = Siglip2Model(config)
    else:
        vision["image_size"] = 32
        config = SiglipConfig(text_config=text, vision_config=vision)
        image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        config.architectures = ["SiglipModel"]
        setattr(config, RANDOM_WEIGHTS_MARKER, True)
        with _seeded(seed):
            model = SiglipModel(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_vl_reranker(out_dir: str | Path, seed: int = 4, *, small: bool = False) -> Path:
    """A Qwen3-VL-Reranker-shaped checkpoint: the released layout (with its LM head) and a tokenizer whose `yes` and
    `no` are single tokens. The folder's name must say "reranker" (that is how the server tells it from an
    embedder), or the model is given `family = "qwen3_vl_reranker"`."""
    from dataclasses import replace

    from transformers import AutoProcessor

    from devtools.tiny_checkpoint import SMALL_SPEC, TinySpec, build_tiny_checkpoint

    spec = replace(SMALL_SPEC, layout="released", seed=seed) if small else TinySpec(layout="released", seed=seed)
    out = build_tiny_checkpoint(out_dir, spec)
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    missing = [
        word for word in ("yes", "no") if tokenizer.convert_tokens_to_ids(word) in (None, tokenizer.unk_token_id)
    ]
    if missing:
        tokenizer.add_tokens(missing)  # the config's vocabulary has headroom for them
        processor.save_pretrained(out)
    return out


def build_qwen3_reranker(out_dir: str | Path, seed: int = 5) -> Path:
    """A Qwen3-Reranker-shaped causal LM whose tokenizer has single `yes` and `no` tokens (the folder's name must say
    "reranker", or the model is given `family = "qwen3_reranker"`)."""
    from transformers import AutoTokenizer

    out = build_causal_lm(out_dir, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    missing = [
        word for word in ("yes", "no") if tokenizer.convert_tokens_to_ids(word) in (None, tokenizer.unk_token_id)
    ]
    if missing:
        tokenizer.add_tokens(missing)  # the config's vocabulary has headroom for them
        tokenizer.save_pretrained(out)
    return out


def build_all(out_dir: str | Path) -> dict[str, Path]:
    root = Path(out_dir)
    return {
        "qwen3_embedding": build_qwen3_embedding(root / "qwen3-embedding"),
        "causal_lm": build_causal_lm(root / "causal-lm"),
        "siglip": build_siglip(root / "siglip"),
        "siglip2": build_siglip(root / "siglip2", naflex=True),
        "vl_reranker": build_vl_reranker(root / "vl-reranker"),
        "qwen3_reranker": build_qwen3_reranker(root / "qwen3-reranker"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    for name, path in build_all(args.out_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
