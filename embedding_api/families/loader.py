"""Finding the weights and building the right family adapter for them."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from embedding_api.catalog import FAMILIES, ModelSpec
from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.device import best_attention, resolve_device, resolve_dtype
from embedding_api.families.download import hub_id_for_folder
from embedding_api.settings import Settings

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The model cannot be had; the message is one sentence saying what to do."""


# Set in config.json by devtools/tiny_checkpoint.py: a checkpoint with random weights (tests, the demo).
RANDOM_WEIGHTS_MARKER = "embedding_api_random_weights"


def local_model_folder(model_path: str) -> Path | None:
    """The checks that need no network: the folder when MODEL_PATH is one, None when it is a hub id."""
    local = Path(model_path).expanduser()
    known = hub_id_for_folder(model_path)
    if known is not None and not (local / "config.json").is_file():
        raise ModelUnavailable(
            f"MODEL_PATH={model_path} does not hold the model yet: run `make download` (or `python -m embedding_api "
            f"download`) to fetch {known} into that folder, or point MODEL_PATH at a folder that has the model."
        )
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"MODEL_PATH={model_path} is a folder without config.json; put the model's files there "
                "(see models/README.md) or point MODEL_PATH at the folder that has them."
            )
        return local
    if model_path.startswith((".", "/", "~")) or model_path.count("/") != 1:
        raise ModelUnavailable(
            f"MODEL_PATH={model_path} is neither an existing folder nor a hub id like Qwen/Qwen3-VL-Embedding-2B; "
            "fix MODEL_PATH in .env."
        )
    return None


def resolve_model_path(model_path: str) -> Path:
    """A local folder as is; a hub id from the local cache, or downloaded when the network allows."""
    local = local_model_folder(model_path)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ModelUnavailable(_not_found_sentence(model_path))
    try:
        log.info("downloading %s from the hub (first start only)", model_path)
        return Path(snapshot_download(model_path))
    except Exception as exc:
        raise ModelUnavailable(_not_found_sentence(model_path)) from exc


def _not_found_sentence(model_path: str) -> str:
    folder = model_path.split("/")[-1]
    return (
        f"Model {model_path} is not on this machine and could not be downloaded: run "
        f"`.venv/bin/hf download {model_path} --local-dir models/{folder}` where the hub is reachable, "
        f"then set MODEL_PATH=models/{folder}."
    )


def has_random_weights(model_path: str) -> bool:
    """A local checkpoint marked by `devtools.tiny_checkpoint` as randomly initialised (the demo, the tests)."""
    try:
        with open(Path(model_path).expanduser() / "config.json", encoding="utf-8") as handle:
            return json.load(handle).get(RANDOM_WEIGHTS_MARKER) is True
    except (OSError, ValueError, AttributeError):
        return False


def model_type_of(path: Path) -> str:
    with open(path / "config.json", encoding="utf-8") as handle:
        return str(json.load(handle).get("model_type", ""))


def detect_family(path: Path) -> str | None:
    """The family a checkpoint belongs to, from its files: Qwen3-VL and SigLIP by `model_type`, Qwen3-Embedding by
    its sentence-transformers files (last-token pooling), any other decoder as a hidden-state embedder."""
    with open(path / "config.json", encoding="utf-8") as handle:
        config = json.load(handle)
    model_type = str(config.get("model_type", ""))
    if model_type == "qwen3_vl":
        # the reranker's checkpoint is laid out as the embedder's: its name tells them apart (or `family`)
        return "qwen3_vl_reranker" if "reranker" in path.resolve().name.lower() else "qwen3_vl"
    if model_type in ("siglip", "siglip2"):
        return "siglip"
    pooling = path / "1_Pooling" / "config.json"
    if (path / "modules.json").is_file() and pooling.is_file():
        with open(pooling, encoding="utf-8") as handle:
            options = json.load(handle)
        # sentence-transformers 3-5 write a flag per mode (the released Qwen3-Embedding files), 6 one `pooling_mode`
        if options.get("pooling_mode_lasttoken") or options.get("pooling_mode") == "lasttoken":
            return "qwen3_embedding"
    architectures = [str(name) for name in config.get("architectures") or ()]
    if model_type == "qwen3" and "ForCausalLM" in " ".join(architectures) and "reranker" in path.resolve().name.lower():
        return "qwen3_reranker"
    if any(name.endswith(("ForCausalLM", "Model")) for name in architectures) and "vision_config" not in config:
        return "hidden_state"
    return None


def load_family(settings: Settings, spec: ModelSpec | None = None) -> EmbeddingFamily:
    """Load one model's weights onto its device and wrap them in their family's adapter."""
    spec = spec or ModelSpec(name=settings.model_name, path=settings.model_path)
    setting = "MODEL_PATH" if spec.name == settings.model_name and spec.path == settings.model_path else spec.name
    path = resolve_model_path(spec.path)
    family = spec.family or detect_family(path)
    if family is None:
        raise ModelUnavailable(
            f"{setting}={spec.path} holds a '{model_type_of(path)}' model, which this server cannot serve; it serves "
            f"{', '.join(FAMILIES)} checkpoints (set `family` in MODELS_CONFIG to force one)."
        )
    import torch

    device = resolve_device(spec.device or settings.device)
    dtype = resolve_dtype(spec.dtype or settings.dtype, device)
    if device.type == "cpu":
        from embedding_api.families import cpu_kernels

        torch.set_grad_enabled(False)
        cpu_kernels.choose(settings.cpu_kernels == "compiled")
    loaded: EmbeddingFamily
    if family == "qwen3_vl":
        loaded = _qwen3_vl(settings, spec, path, device, dtype, setting)
    elif family == "qwen3_vl_reranker":
        loaded = _qwen3_vl_reranker(settings, spec, path, device, dtype, setting)
    elif family == "qwen3_reranker":
        loaded = _qwen3_reranker(settings, spec, path, device, dtype, setting)
    elif family == "siglip":
        loaded = _siglip(spec, path, device, dtype, setting)
    else:
        loaded = _text(settings, spec, family, path, device, dtype, setting)
    log.info("loaded %s (%s) on %s as %s, dimension %d", spec.path, loaded.kind, device, dtype, loaded.dimension)
    return loaded


def _weights(auto_class: Any, path: Path, setting: str, source: str, **options: Any) -> Any:
    """The model's weights, refusing a checkpoint that lacks some (random weights in their place)."""
    model, info = auto_class.from_pretrained(path, output_loading_info=True, **options)
    missing = [key for key in info.get("missing_keys", ()) if "lm_head" not in key]
    if missing:
        raise ModelUnavailable(
            f"{setting}={source} is missing {len(missing)} weights (e.g. {missing[0]}); re-download the checkpoint."
        )
    return model


def _qwen3_vl(settings: Settings, spec: ModelSpec, path: Path, device: Any, dtype: Any, setting: str) -> Any:
    from transformers import AutoModel, AutoProcessor

    from embedding_api.families.qwen3_vl import Qwen3VLFamily, VisionLimits

    model = _weights(AutoModel, path, setting, spec.path, dtype=dtype, attn_implementation=best_attention(device))
    model.to(device).eval()
    limits = VisionLimits(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        max_image_size=settings.max_image_size,
        max_image_width=settings.max_image_width,
        max_image_height=settings.max_image_height,
    )
    return Qwen3VLFamily(
        model,
        AutoProcessor.from_pretrained(path),
        device=device,
        default_instruction=spec.default_instruction or settings.default_instruction,
        max_length=spec.max_length or settings.max_length,
        limits=limits,
        max_video_frames=settings.max_video_frames,
    )


def _vision_limits(settings: Settings) -> Any:
    from embedding_api.families.qwen3_vl import VisionLimits

    return VisionLimits(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        max_image_size=settings.max_image_size,
        max_image_width=settings.max_image_width,
        max_image_height=settings.max_image_height,
    )


def _qwen3_vl_reranker(settings: Settings, spec: ModelSpec, path: Path, device: Any, dtype: Any, setting: str) -> Any:
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from embedding_api.families.qwen3_vl_reranker import Qwen3VLRerankerFamily, score_weight

    model = _weights(
        Qwen3VLForConditionalGeneration,
        path,
        setting,
        spec.path,
        dtype=dtype,
        attn_implementation=best_attention(device),
    )
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    weight = score_weight(model.lm_head.weight, processor.tokenizer)
    options: dict[str, Any] = {
        "device": device,
        "limits": _vision_limits(settings),
        "max_video_frames": settings.max_video_frames,
    }
    if spec.default_instruction:
        options["default_instruction"] = spec.default_instruction
    if spec.max_length:
        options["max_length"] = spec.max_length
    return Qwen3VLRerankerFamily(model.model, processor, weight, **options)


def _qwen3_reranker(settings: Settings, spec: ModelSpec, path: Path, device: Any, dtype: Any, setting: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from embedding_api.families.qwen3_reranker import Qwen3RerankerFamily
    from embedding_api.families.qwen3_vl_reranker import score_weight

    model = _weights(
        AutoModelForCausalLM, path, setting, spec.path, dtype=dtype, attn_implementation=best_attention(device)
    )
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    options: dict[str, Any] = {"device": device, "default_instruction": spec.default_instruction}
    if spec.max_length:
        options["max_length"] = spec.max_length
    return Qwen3RerankerFamily(model.model, tokenizer, score_weight(model.lm_head.weight, tokenizer), **options)


def _siglip(spec: ModelSpec, path: Path, device: Any, dtype: Any, setting: str) -> Any:
    from transformers import AutoModel, AutoProcessor

    from embedding_api.families.siglip import SiglipFamily

    model = _weights(AutoModel, path, setting, spec.path, dtype=dtype)
    model.to(device).eval()
    return SiglipFamily(model, AutoProcessor.from_pretrained(path), device=device, text_length=spec.text_length)


def _text(settings: Settings, spec: ModelSpec, family: str, path: Path, device: Any, dtype: Any, setting: str) -> Any:
    from transformers import AutoModel, AutoTokenizer

    from embedding_api.families.text_embedders import QWEN3_EMBEDDING, TextEmbedderFamily, hidden_state_recipe

    recipe = QWEN3_EMBEDDING if family == "qwen3_embedding" else hidden_state_recipe(spec.layer, spec.pooling)
    model = _weights(AutoModel, path, setting, spec.path, dtype=dtype, attn_implementation=best_attention(device))
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return TextEmbedderFamily(
        model,
        tokenizer,
        recipe,
        device=device,
        max_length=spec.max_length or settings.max_length,
        default_instruction=spec.default_instruction,
    )
