"""The Docker files: the Dockerfile (hadolint, essentials), docker-compose.yml and .dockerignore."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT as ROOT


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
