"""`python -m embedding_api download`: fetch MODEL_PATH's hub id into models/<name> once, then serve from there.

When MODEL_PATH is already a folder path named after a known model (the older project's
`./models/Qwen3-VL-Embedding-2B`), that model is fetched into exactly that folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from embedding_api.catalog import CatalogError, model_specs
from embedding_api.settings import Settings

MODELS_DIR = Path("models")
# Folder names MODEL_PATH may give for a model not downloaded yet (`./models/Qwen3-VL-Embedding-2B`), and their hub ids.
KNOWN_FOLDERS = {
    "qwen3-vl-embedding-2b": "Qwen/Qwen3-VL-Embedding-2B",
    "qwen3-vl-embedding-8b": "Qwen/Qwen3-VL-Embedding-8B",
    "qwen3-embedding-0.6b": "Qwen/Qwen3-Embedding-0.6B",
    "qwen3-embedding-4b": "Qwen/Qwen3-Embedding-4B",
    "qwen3-embedding-8b": "Qwen/Qwen3-Embedding-8B",
    "siglip2-so400m-patch16-512": "google/siglip2-so400m-patch16-512",
    "siglip-so400m-patch14-384": "google/siglip-so400m-patch14-384",
}


class DownloadFailed(RuntimeError):
    """The weights could not be fetched; the message is one sentence saying why and what to do."""


def looks_like_hub_id(model_path: str) -> bool:
    """`org/name`, as the loader reads it: not a path (no leading `.`, `/`, `~`) and exactly one slash."""
    return not model_path.startswith((".", "/", "~")) and model_path.count("/") == 1


def hub_id_for_folder(model_path: str) -> str | None:
    """The hub id a folder MODEL_PATH stands for when its last part names a known model, else None.

    `models/Qwen3-VL-Embedding-2B` (the line `make download` prints) is read as this project's weights folder,
    not as a hub id.
    """
    path = Path(model_path).expanduser()
    if looks_like_hub_id(model_path) and path.parts[0] != MODELS_DIR.name:
        return None
    return KNOWN_FOLDERS.get(path.name.lower())


def local_dir_for(repo_id: str, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / repo_id.split("/")[-1]


def fetch(repo_id: str, local_dir: Path) -> Path:
    """Download every file of `repo_id` into `local_dir` (huggingface_hub draws the progress bars)."""
    import httpx
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    unreachable = (
        f"cannot reach the Hugging Face hub ({constants.ENDPOINT}) to download {repo_id}: check the network "
        f"(and HF_HUB_OFFLINE / HF_ENDPOINT), or copy the model's files into {local_dir} from a machine that has them."
    )
    if constants.is_offline_mode():
        raise DownloadFailed(
            f"HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded: unset it where the hub is reachable, "
            f"or copy the model's files into {local_dir} from a machine that has them."
        )
    print(f"downloading {repo_id} into {local_dir}/ ...", flush=True)
    try:
        return Path(snapshot_download(repo_id, local_dir=local_dir))
    except GatedRepoError as exc:
        raise DownloadFailed(
            f"{repo_id} is gated: accept its terms on the hub and log in (`hf auth login` or HF_TOKEN), then retry."
        ) from exc
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise DownloadFailed(
            f"{repo_id} is not a model on the hub; set MODEL_PATH to a hub id like Qwen/Qwen3-VL-Embedding-2B."
        ) from exc
    except (LocalEntryNotFoundError, ConnectionError, TimeoutError, httpx.TransportError) as exc:
        # snapshot_download turns a failed connection into LocalEntryNotFoundError when nothing is cached.
        raise DownloadFailed(unreachable) from exc
    except HfHubHTTPError as exc:
        raise DownloadFailed(f"the hub refused the download of {repo_id}: {_first_line(exc)}") from exc
    except OSError as exc:
        # Network errors of the HTTP client not mapped above, and local disk errors (full disk, no permission).
        raise DownloadFailed(f"downloading {repo_id} into {local_dir} failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def download(models_dir: Path = MODELS_DIR) -> int:
    """Fetch MODEL_PATH (or each model of MODELS / MODELS_CONFIG) into models_dir/<name> and print the line to use;
    0 on success, 1 with a one-line error for any model that could not be had."""
    settings = Settings()
    if not settings.models.strip() and not settings.models_config:
        return _download_one("MODEL_PATH", settings.model_path, models_dir)
    try:
        specs = model_specs(settings)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return max(_download_one(spec.name, spec.path, models_dir) for spec in specs)


def _download_one(label: str, model_path: str, models_dir: Path) -> int:
    """One model, named in messages as `label=path` (MODEL_PATH=..., or a MODELS pair).

    A folder named after a known model (`./models/Qwen3-VL-Embedding-2B`) gets that model, in that folder.
    """
    line = "MODEL_PATH" if label == "MODEL_PATH" else "MODELS"
    local = Path(model_path).expanduser()
    if (local / "config.json").is_file():
        print(f"{label}={model_path} is already a local folder with the model; nothing to download.")
        return 0
    folder_of = hub_id_for_folder(model_path)
    if folder_of is not None:  # `./models/Qwen3-VL-Embedding-2B` not there yet (or half downloaded): fill it
        return _fetch_and_report(folder_of, local, f"done: MODEL_PATH={model_path} now holds {folder_of}.")
    if local.is_dir():
        print(
            f"error: MODEL_PATH={model_path} is a folder without config.json; set MODEL_PATH to the model's hub id "
            "(default Qwen/Qwen3-VL-Embedding-2B) to download it, or put the model's files there.",
            file=sys.stderr,
        )
        return 1
    if not looks_like_hub_id(model_path):
        print(
            f"error: MODEL_PATH={model_path} is neither an existing folder nor a hub id like "
            "Qwen/Qwen3-VL-Embedding-2B; fix it in .env.",
            file=sys.stderr,
        )
        return 1
    target = local_dir_for(model_path, models_dir)
    done = (
        f"done. Serve the local copy with this in .env ({line}):\n{label}={target.as_posix()}"
        if line == "MODELS"
        else f"done. Put this line in .env to serve the local copy:\nMODEL_PATH={target.as_posix()}"
    )
    return _fetch_and_report(model_path, target, done)


def _fetch_and_report(repo_id: str, target: Path, done: str) -> int:
    try:
        fetch(repo_id, target)
    except DownloadFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the download.", file=sys.stderr)
        return 130
    print(done)
    return 0
