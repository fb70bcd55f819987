"""Finding the weights and building the right family adapter for them."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.device import best_attention, resolve_device, resolve_dtype
from embedding_api.families.download import hub_id_for_folder
from embedding_api.settings import Settings

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen3_vl",)


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


def load_family(settings: Settings) -> EmbeddingFamily:
    """Load weights and processor onto the configured device and wrap them in their family adapter."""
    path = resolve_model_path(settings.model_path)
    model_type = model_type_of(path)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelUnavailable(
            f"MODEL_PATH={settings.model_path} holds a '{model_type}' model; this server serves "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} checkpoints."
        )
    import torch
    from transformers import AutoModel, AutoProcessor

    from embedding_api.families.qwen3_vl import Qwen3VLFamily, VisionLimits

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    model, info = AutoModel.from_pretrained(
        path, dtype=dtype, attn_implementation=best_attention(device), output_loading_info=True
    )
    missing = [key for key in info.get("missing_keys", ()) if "lm_head" not in key]
    if missing:
        raise ModelUnavailable(
            f"MODEL_PATH={settings.model_path} is missing {len(missing)} weights (e.g. {missing[0]}); "
            "re-download the checkpoint."
        )
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    if device.type == "cpu":
        torch.set_grad_enabled(False)
    limits = VisionLimits(
        min_pixels=settings.min_pixels,
        max_pixels=settings.max_pixels,
        max_image_size=settings.max_image_size,
        max_image_width=settings.max_image_width,
        max_image_height=settings.max_image_height,
    )
    family = Qwen3VLFamily(
        model,
        processor,
        device=device,
        default_instruction=settings.default_instruction,
        max_length=settings.max_length,
        limits=limits,
        max_video_frames=settings.max_video_frames,
    )
    log.info(
        "loaded %s (%s) on %s as %s, dimension %d", settings.model_path, model_type, device, dtype, family.dimension
    )
    return family
