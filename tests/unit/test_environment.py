"""`.env` beyond the settings: process variables reach os.environ before torch, unknown keys are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import embedding_api
from embedding_api import environment
from tests.support.paths import OLDER_ENV
from tests.support.paths import REPO_ROOT as ROOT


def write_env(folder: Path, text: str) -> Path:
    path = folder / ".env"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def clean_process_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the process variables in the environment; whatever a test sets is undone afterwards."""
    for name in environment.PROCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_process_variables")
def test_process_variables_in_dotenv_reach_the_environment(tmp_path: Path) -> None:
    env = write_env(
        tmp_path,
        "CUDA_VISIBLE_DEVICES=1  # a comment\nHF_HOME=/srv/hf\nHF_HUB_OFFLINE=1\nOMP_NUM_THREADS=3\n"
        "TOKENIZERS_PARALLELISM=false\nPYTORCH_CUDA_ALLOC_CONF=expandable_segments:True\nPORT=7001\n",
    )
    applied = environment.apply_process_variables(env)
    assert applied == {
        "CUDA_VISIBLE_DEVICES": "1",
        "HF_HOME": "/srv/hf",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "3",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["HF_HOME"] == "/srv/hf"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


@pytest.mark.usefixtures("clean_process_variables")
def test_settings_are_not_copied_into_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    environment.apply_process_variables(write_env(tmp_path, "PORT=7001\nUNRELATED_THING=1\n"))
    assert "PORT" not in os.environ and "UNRELATED_THING" not in os.environ


@pytest.mark.usefixtures("clean_process_variables")
def test_the_real_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    applied = environment.apply_process_variables(write_env(tmp_path, "CUDA_VISIBLE_DEVICES=1\nHF_ENDPOINT=http://x\n"))
    assert applied == {"HF_ENDPOINT": "http://x"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.usefixtures("clean_process_variables")
def test_dotenv_wins_over_the_packages_own_omp_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_api, "SPINCOUNT_DEFAULTED", True)
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")  # as the package's import left it
    environment.apply_process_variables(write_env(tmp_path, "GOMP_SPINCOUNT=500\n"))
    assert os.environ["GOMP_SPINCOUNT"] == "500"


@pytest.mark.usefixtures("clean_process_variables")
def test_a_user_set_omp_policy_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedding_api, "SPINCOUNT_DEFAULTED", False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    environment.apply_process_variables(write_env(tmp_path, "GOMP_SPINCOUNT=500\n"))
    assert os.environ["GOMP_SPINCOUNT"] == "10000"


def test_no_dotenv_sets_nothing(tmp_path: Path) -> None:
    assert environment.apply_process_variables(tmp_path / ".env") == {}
    assert environment.unknown_key_warnings(tmp_path / ".env") == []


def test_unknown_keys_are_named_with_the_closest_setting(tmp_path: Path) -> None:
    env = write_env(
        tmp_path,
        "MAX_BATCHSIZE=8\nEMBEDDING_DIM=256\nport=7001\nCUDA_VISIBLE_DEVICE=1\nCUDA_VISIBLE_DEVICES=1\nXYZZY=1\n",
    )
    assert environment.unknown_key_warnings(env) == [
        f"{env}: unknown setting MAX_BATCHSIZE is ignored; did you mean MAX_BATCH_SIZE?",
        f"{env}: unknown setting EMBEDDING_DIM is ignored; did you mean EMBEDDING_DIMENSION?",
        f"{env}: unknown setting CUDA_VISIBLE_DEVICE is ignored; did you mean CUDA_VISIBLE_DEVICES?",
        f"{env}: unknown setting XYZZY is ignored; `python -m embedding_api --help` lists every setting.",
    ]


def test_the_older_projects_env_has_no_unknown_key() -> None:
    assert environment.unknown_key_warnings(OLDER_ENV) == []


def test_the_uvicorn_entry_applies_dotenv_before_torch_and_the_hub_read_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`uvicorn embedding_api.main:app`: torch runs on OMP_NUM_THREADS and the hub client uses HF_ENDPOINT of .env."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: torch uses one thread whatever OMP_NUM_THREADS says")
    write_env(
        tmp_path,
        f"MODEL_PATH={tiny_model_dir}\nDEVICE=cpu\nOMP_NUM_THREADS=1\nHF_ENDPOINT=http://127.0.0.1:9\nMAX_BATCHSIZE=8\n",
    )
    clean = {key: value for key, value in os.environ.items() if key not in environment.PROCESS_VARIABLES}
    clean.pop("MODEL_PATH", None)
    script = (
        "import embedding_api.main, torch\n"
        "from huggingface_hub import constants\n"
        "print(torch.get_num_threads(), constants.ENDPOINT)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "http://127.0.0.1:9"]
    assert ".env: unknown setting MAX_BATCHSIZE is ignored; did you mean MAX_BATCH_SIZE?" in result.stderr
