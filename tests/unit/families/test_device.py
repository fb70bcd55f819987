"""`resolve_device`: DEVICE checked against this machine, in one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedding_api.families.device import resolve_device


def test_cpu_and_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_cuda_is_one_sentence_about_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(RuntimeError) as caught:
        resolve_device("cuda")
    assert str(caught.value) == "DEVICE=cuda was asked for but CUDA is not available; set DEVICE=cpu or auto."


def test_the_message_shows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(RuntimeError) as caught:
        resolve_device("cuda:0")
    assert str(caught.value) == (
        "DEVICE=cuda:0 was asked for but CUDA is not available (CUDA_VISIBLE_DEVICES=1); set DEVICE=cpu or auto."
    )


def test_a_gpu_index_past_the_visible_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RuntimeError) as caught:
        resolve_device("cuda:2")
    assert str(caught.value) == (
        "DEVICE=cuda:2 was asked for but this machine shows 2 CUDA device(s), numbered from cuda:0; "
        "set DEVICE=cuda, auto or a lower cuda:N."
    )


def test_a_serial_helper_thread_computes_alone_and_leaves_the_others_their_width() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from embedding_api.families.device import cpu_thread_setup, serial_cpu_thread

    width = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=serial_cpu_thread) as helper:
        assert helper.submit(torch.get_num_threads).result() == 1
        matrix = torch.randn(600, 600)  # big enough for a parallel op, were the thread parallel
        assert torch.allclose(helper.submit(lambda: matrix @ matrix).result(), matrix @ matrix, atol=1e-4)
    with ThreadPoolExecutor(1) as other:
        assert other.submit(torch.get_num_threads).result() == width  # new threads keep the process's width
    assert torch.get_num_threads() == width
    assert cpu_thread_setup("cpu") is serial_cpu_thread
    assert cpu_thread_setup("cuda:0") is None


def test_torchs_openmp_is_found_from_a_virtual_environment_reached_through_a_symlink(tmp_path: Path) -> None:
    # a venv mounted or linked elsewhere (a Docker layer, a worktree beside the checkout): torch's own path then
    # differs from the real one /proc/self/maps lists
    linked = tmp_path / "venv"
    linked.symlink_to(sys.prefix, target_is_directory=True)
    probe = "import torch; from embedding_api.families.device import _openmp; print(_openmp() is not None)"
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [str(linked / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.stdout.strip().splitlines()[-1] == "True"
