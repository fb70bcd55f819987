"""`python -m embedding_api`: --help, the download command, the startup error, and the Docker files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from embedding_api.cli import _env_default
from embedding_api.environment import PROCESS_VARIABLES
from embedding_api.families import download as download_module
from embedding_api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OLDER_ENV = Path(__file__).parent / "older_project.env"  # the older embedding_api's .env, verbatim
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def cli_env(**env: str) -> dict[str, str]:
    """This process's environment without settings or process variables (so only `.env` and `env` count)."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in Settings.model_fields and key.upper() not in PROCESS_VARIABLES
    }
    clean.update(PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1", **env)
    return clean


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


def older_env(model_path: str | None = None, device: str | None = None) -> str:
    """The older project's .env, verbatim but for MODEL_PATH and DEVICE when given."""
    text = OLDER_ENV.read_text(encoding="utf-8")
    if model_path is not None:
        text = text.replace("MODEL_PATH=./models/Qwen3-VL-Embedding-2B ", f"MODEL_PATH={model_path} ")
    if device is not None:
        text = text.replace("DEVICE=cuda ", f"DEVICE={device} ")
    return text


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_older_env_with_a_checkpoint_and_cpu_starts_on_the_first_try(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / ".env").write_text(older_env(str(tiny_model_dir), "cpu"), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        # The real environment wins over .env: the test's free loopback port instead of its PORT=6008.
        server = subprocess.Popen(
            [sys.executable, "-m", "embedding_api"],
            cwd=tmp_path,
            env=cli_env(PORT=str(port), HOST="127.0.0.1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert health is not None and health.status_code == 200, log_path.read_text()
        body = health.json()
        assert body["model"] == "Qwen3-VL-Embedding-2B"
        assert body["device"] == "cpu"
        assert (body["max_image_width"], body["max_image_height"]) == (512, 512)
        assert body["random_weights"] is True
        key = {"Authorization": "Bearer sk-embedding-api-secret-key-20260114"}
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, timeout=30).status_code == 401
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, headers=key, timeout=30).status_code == 200
        head = httpx.head(f"{url}/health", timeout=5)
        assert head.status_code == 200 and head.content == b""
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    log = log_path.read_text()
    assert "Traceback" not in log and "unknown setting" not in log
    assert "holds RANDOM weights" in log


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


@pytest.mark.parametrize(
    ("model_path", "repo_id"),
    [
        ("./models/Qwen3-VL-Embedding-2B", "Qwen/Qwen3-VL-Embedding-2B"),
        ("models/Qwen3-VL-Embedding-2B", "Qwen/Qwen3-VL-Embedding-2B"),
        ("./weights/qwen3-vl-embedding-8b", "Qwen/Qwen3-VL-Embedding-8B"),
    ],
)
def test_download_fills_exactly_the_model_path_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_path: str, repo_id: str
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    calls: list[tuple[str, Path]] = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path) -> str:
        calls.append((repo_id, Path(local_dir)))
        return str(local_dir)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL_PATH", model_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_module.download() == 0
    assert calls == [(repo_id, Path(model_path))]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"done: MODEL_PATH={model_path} now holds {repo_id}."


def test_download_resumes_into_a_half_filled_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    folder = tmp_path / "models" / "Qwen3-VL-Embedding-2B"
    folder.mkdir(parents=True)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"partial")
    calls: list[tuple[str, Path]] = []

    def fake_snapshot_download(repo_id: str, *, local_dir: Path) -> str:
        calls.append((repo_id, Path(local_dir)))
        return str(local_dir)

    monkeypatch.setenv("MODEL_PATH", str(folder))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert download_module.download() == 0
    assert calls == [("Qwen/Qwen3-VL-Embedding-2B", folder)]


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
