"""What `.env` holds besides our settings: the process variables that libraries read, and keys nobody reads.

`apply_process_variables()` is the first thing both entry points do (`python -m embedding_api` in cli.py, and
`uvicorn embedding_api.main:app`): torch reads CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS, huggingface_hub its HF_*
variables, once, when they are first imported, so a value that arrives later is silently ignored.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import embedding_api
from embedding_api.settings import Settings

# Variables read from the process environment by torch, CUDA, OpenMP, tokenizers, huggingface_hub and httpx.
PROCESS_VARIABLES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "CUDA_LAUNCH_BLOCKING",
        "CUDA_MODULE_LOADING",
        "PYTORCH_CUDA_ALLOC_CONF",
        "PYTORCH_ALLOC_CONF",
        "PYTORCH_NVML_BASED_CUDA_CHECK",
        "TORCH_HOME",
        "OMP_NUM_THREADS",
        "OMP_WAIT_POLICY",
        "GOMP_SPINCOUNT",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_HUB_ENABLE_HF_TRANSFER",
        "HF_XET_HIGH_PERFORMANCE",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HF_HUB_ETAG_TIMEOUT",
        "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
    }
)


def dotenv_file() -> Path:
    """The `.env` the settings read (relative to the working directory)."""
    return Path(str(Settings.model_config.get("env_file") or ".env"))


def read_dotenv(path: Path | None = None) -> dict[str, str]:
    """`.env`'s keys and values as pydantic-settings reads them (inline comments dropped); {} when absent."""
    path = path or dotenv_file()
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    encoding = str(Settings.model_config.get("env_file_encoding") or "utf-8")
    return {key: value for key, value in dotenv_values(path, encoding=encoding).items() if value is not None}


def _set_by_the_user(name: str) -> bool:
    """In the real environment; GOMP_SPINCOUNT only if the package's own default did not put it there."""
    if name == "GOMP_SPINCOUNT" and embedding_api.SPINCOUNT_DEFAULTED:
        return False
    return name in os.environ


def apply_process_variables(path: Path | None = None) -> dict[str, str]:
    """Copy the process variables `.env` gives into os.environ, except those the real environment already has.

    Returns what was set. Call it before torch or huggingface_hub are imported.
    """
    applied: dict[str, str] = {}
    for key, value in read_dotenv(path).items():
        name = key.upper()
        if name in PROCESS_VARIABLES and not _set_by_the_user(name):
            os.environ[name] = value
            applied[name] = value
    if "GOMP_SPINCOUNT" in applied:
        embedding_api.SPINCOUNT_DEFAULTED = False
    return applied


def unknown_key_warnings(path: Path | None = None) -> list[str]:
    """One sentence per `.env` key that is neither a setting nor a process variable, with the closest known name."""
    path = path or dotenv_file()
    settings = [name.upper() for name in Settings.model_fields]
    known = set(settings) | PROCESS_VARIABLES
    warnings = []
    for key in read_dotenv(path):
        name = key.upper()
        if name in known:
            continue
        close = difflib.get_close_matches(name, [*settings, *sorted(PROCESS_VARIABLES)], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "`python -m embedding_api --help` lists every setting."
        warnings.append(f"{path}: unknown setting {key} is ignored; {hint}")
    return warnings
