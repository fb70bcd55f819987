"""`python -m embedding_api` (`embedding_api.cli`): --help, the download command and the one-line startup errors.

The server really starting from the older `.env` is in tests/e2e/test_cli_serve.py."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedding_api.cli import _env_default
from embedding_api.settings import Settings
from tests.support.cli import cli_env, older_env
from tests.support.paths import OLDER_ENV

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m embedding_api ARGS` in `cwd` (so no stray .env is read), settings only from `env`."""
    return subprocess.run(
        [sys.executable, "-m", "embedding_api", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def squash(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_setting_with_default_and_description(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = squash(result.stdout)
    for name, field in Settings.model_fields.items():
        default = _env_default(field.get_default(call_default_factory=True))
        assert f"{name.upper()} (default: {default})" in text, name
        assert squash(field.description or "") in text, name
    assert "MODEL_PATH (default: Qwen/Qwen3-VL-Embedding-2B)" in text
    assert "PORT (default: 6008)" in text
    assert "serve" in text and "download" in text


def test_download_help(tmp_path: Path) -> None:
    result = run_cli("download", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "models/<name>" in result.stdout


def test_download_offline_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("download", cwd=tmp_path, HF_HUB_OFFLINE="1")
    line = assert_one_line_error(result)
    assert "HF_HUB_OFFLINE" in line and "Qwen/Qwen3-VL-Embedding-2B" in line
    assert not (tmp_path / "models").exists()


def test_download_unreachable_hub_is_one_line_error(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("download", cwd=tmp_path, HF_ENDPOINT=endpoint)
    line = assert_one_line_error(result)
    assert f"cannot reach the Hugging Face hub ({endpoint})" in line


def test_download_of_a_local_folder_does_nothing(tmp_path: Path) -> None:
    model = tmp_path / "weights"
    model.mkdir()
    (model / "config.json").write_text("{}")
    result = run_cli("download", cwd=tmp_path, MODEL_PATH=str(model), HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr
    assert "already a local folder" in result.stdout


def test_download_of_a_folder_without_config_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = assert_one_line_error(run_cli("download", cwd=tmp_path, MODEL_PATH=str(tmp_path / "empty")))
    assert "without config.json" in line


def test_download_of_a_missing_path_is_one_line_error(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("download", cwd=tmp_path, MODEL_PATH="/nonexistent/x"))
    assert "MODEL_PATH=/nonexistent/x" in line


def test_serve_with_a_missing_model_folder_is_one_sentence(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli(cwd=tmp_path, MODEL_PATH="/nonexistent/x"))
    assert "MODEL_PATH=/nonexistent/x is neither an existing folder nor a hub id" in line


def test_invalid_setting_is_one_line_error(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("download", cwd=tmp_path, PORT="not-a-port"))
    assert line == (
        "error: invalid setting PORT: Input should be a valid integer, unable to parse string as an integer "
        "(got 'not-a-port')"
    )


def test_every_invalid_setting_is_reported_in_one_start(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=not-a-port\nLOG_LEVEL=loud\nMAX_BATCHSIZE=8\n")
    result = run_cli(cwd=tmp_path, API_KEY=" , ", DEVICE="gpu")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "warning: .env: unknown setting MAX_BATCHSIZE is ignored; did you mean MAX_BATCH_SIZE?",
        "error: invalid setting API_KEY: holds only blanks and commas, which would silently turn authentication off: "
        "set a key, or leave API_KEY empty to run without one",
        "error: invalid setting PORT: Input should be a valid integer, unable to parse string as an integer "
        "(got 'not-a-port')",
        "error: invalid setting LOG_LEVEL: Input should be 'debug', 'info', 'warning', 'error' or 'critical' "
        "(got 'loud')",
        "error: invalid setting DEVICE: must be auto, cpu, cuda or cuda:N (N the GPU's index) (got 'gpu')",
    ]
    assert result.stdout == ""


def test_the_older_env_has_only_model_path_and_device_changed(tiny_model_dir: Path) -> None:
    before = OLDER_ENV.read_text(encoding="utf-8").splitlines()
    after = older_env(str(tiny_model_dir), "cpu").splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert [new.split()[0] for _, new in changed] == [f"MODEL_PATH={tiny_model_dir}", "DEVICE=cpu"]


@NO_CUDA
def test_the_older_env_with_device_cuda_fails_in_one_sentence_about_device(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / ".env").write_text(older_env(str(tiny_model_dir)), encoding="utf-8")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 1
    # CUDA_VISIBLE_DEVICES=1 of .env reached the process before torch looked for GPUs.
    assert result.stderr.splitlines() == [
        "error: DEVICE=cuda was asked for but CUDA is not available (CUDA_VISIBLE_DEVICES=1); set DEVICE=cpu or auto."
    ]
    assert result.stdout == ""


@NO_CUDA
def test_the_older_env_verbatim_reports_both_problems_at_once(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(older_env(), encoding="utf-8")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: DEVICE=cuda was asked for but CUDA is not available (CUDA_VISIBLE_DEVICES=1); set DEVICE=cpu or auto.",
        "error: MODEL_PATH=./models/Qwen3-VL-Embedding-2B does not hold the model yet: run `make download` (or "
        "`python -m embedding_api download`) to fetch Qwen/Qwen3-VL-Embedding-2B into that folder, or point "
        "MODEL_PATH at a folder that has the model.",
    ]
    assert not (tmp_path / "models").exists()


def test_a_model_folder_not_downloaded_yet_says_make_download(tmp_path: Path) -> None:
    line = assert_one_line_error(
        run_cli(cwd=tmp_path, MODEL_PATH="./models/Qwen3-VL-Embedding-2B", DEVICE="cpu", HF_HUB_OFFLINE="1")
    )
    assert line == (
        "error: MODEL_PATH=./models/Qwen3-VL-Embedding-2B does not hold the model yet: run `make download` (or "
        "`python -m embedding_api download`) to fetch Qwen/Qwen3-VL-Embedding-2B into that folder, or point "
        "MODEL_PATH at a folder that has the model."
    )


def test_hf_endpoint_in_dotenv_reaches_the_hub_client(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    (tmp_path / ".env").write_text(f"HF_ENDPOINT={endpoint}\n")
    line = assert_one_line_error(run_cli("download", cwd=tmp_path))
    assert f"cannot reach the Hugging Face hub ({endpoint})" in line


def test_the_real_environment_wins_over_dotenv_process_variables(tmp_path: Path) -> None:
    in_dotenv, in_environment = f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    (tmp_path / ".env").write_text(f"HF_ENDPOINT={in_dotenv}\n")
    line = assert_one_line_error(run_cli("download", cwd=tmp_path, HF_ENDPOINT=in_environment))
    assert f"cannot reach the Hugging Face hub ({in_environment})" in line
