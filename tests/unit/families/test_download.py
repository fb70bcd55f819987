"""`embedding_api.families.download`: `download` fills exactly the MODEL_PATH folder from the hub (the hub faked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedding_api.families import download as download_module


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
