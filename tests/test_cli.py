"""`python -m embedding_api`: --help, the download command, the startup error, and the Docker files."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_api import download as download_module
from embedding_api.cli import _env_default
from embedding_api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m embedding_api ARGS` in `cwd` (so no stray .env is read), settings only from `env`."""
    clean = {key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields}
    clean.pop("HF_HUB_OFFLINE", None)
    clean.update(PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1", **env)
    return subprocess.run(
        [sys.executable, "-m", "embedding_api", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120
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


def test_download_fetches_into_models_and_prints_the_env_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    calls: list[tuple[str, Path]] = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path) -> str:
        calls.append((repo_id, Path(local_dir)))
        return str(local_dir)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PATH", "Qwen/Qwen3-VL-Embedding-2B")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_module.download() == 0
    assert calls == [("Qwen/Qwen3-VL-Embedding-2B", Path("models/Qwen3-VL-Embedding-2B"))]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "MODEL_PATH=models/Qwen3-VL-Embedding-2B"


def test_download_maps_a_missing_repo_to_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    def fake_snapshot_download(repo_id: str, *, local_dir: Path) -> str:
        raise HFValidationError("Repo id must be in the form 'repo_name'\nmore detail")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PATH", "nobody/nothing")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_module.download() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: nobody/nothing is not a model on the hub; set MODEL_PATH to a hub id like Qwen/Qwen3-VL-Embedding-2B."
    ]


def test_serve_with_a_missing_model_folder_is_one_sentence(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli(cwd=tmp_path, MODEL_PATH="/nonexistent/x"))
    assert "MODEL_PATH=/nonexistent/x is neither an existing folder nor a hub id" in line


def test_invalid_setting_is_one_line_error(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("download", cwd=tmp_path, PORT="not-a-port"))
    assert line.startswith("error: invalid settings: PORT")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (it is in requirements-dev.txt)")
    result = subprocess.run(
        [hadolint, "--format", "json", "--no-fail", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    findings = json.loads(result.stdout)
    assert [f for f in findings if f["level"] in ("error", "warning")] == [], findings


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--no-cache-dir -r requirements.txt" in text
    user = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, flags=re.MULTILINE)
    assert "EXPOSE 6008" in text
    assert "MODEL_PATH=/app/models/Qwen3-VL-Embedding-2B" in text
    assert 'CMD ["python", "-m", "embedding_api"]' in text


def test_compose_reserves_a_gpu_and_mounts_the_models() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "./models:/app/models:ro" in service["volumes"]
    assert service["env_file"] == ".env"
    assert any(str(port).endswith(":6008") for port in service["ports"])


def test_dockerignore_keeps_weights_and_secrets_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :].count("!models/") == 0
    assert "!embedding_api/" in lines and "!requirements.txt" in lines
