"""`python -m embedding_api batch`: bulk jobs on the tiny checkpoint, checked against the server's own HTTP answers.

Every expected vector comes from POST /v1/embeddings on a TestClient over the same checkpoint and settings; the
job's output is read back from Parquet and its errors file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from embedding_api.families.base import EmbeddingFamily
from embedding_api.http.app import create_app
from embedding_api.jobs.output import parts_folder
from embedding_api.jobs.runner import JobOptions, JobReport, run_job
from embedding_api.settings import Settings
from tests.conftest import API_KEY, data_uri, image_bytes, make_image, make_settings, wait_ready
from tests.support.cli import cli_env
from tests.support.jobs import (
    JOB_INSTRUCTION,
    MAX_LENGTH,
    Corpus,
    http_error,
    http_vectors,
    mixed_corpus,
    read_errors,
    read_output,
    text,
    without_param,
)

MODEL = "Qwen3-VL-Embedding-2B"
OPTIONS = JobOptions(instruction=JOB_INSTRUCTION, truncate=False, batch_size=64, progress=False)
HTTP_OPTIONS = {"instruction": JOB_INSTRUCTION, "truncate": False}
ROWS = 800  # the texts of the interrupted command-line jobs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return mixed_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path, corpus: Corpus) -> Settings:
    return make_settings(tiny_model_dir, max_length=MAX_LENGTH, allowed_local_media_path=str(corpus.media))


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[TestClient]:
    """The server over the same checkpoint and settings as the jobs: the source of every expected answer."""
    with TestClient(create_app(settings)) as client:  # loads the checkpoint with these settings (MAX_LENGTH)
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


@pytest.fixture(scope="module")
def reference(server: TestClient, corpus: Corpus) -> dict[str, np.ndarray]:
    ids = list(corpus.good)
    vectors = http_vectors(server, [corpus.good[row_id] for row_id in ids], **HTTP_OPTIONS)
    return dict(zip(ids, vectors, strict=True))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, settings: Settings, corpus: Corpus) -> tuple[Path, JobReport]:
    """The 1,000-row job, loading the checkpoint from MODEL_PATH as the command does."""
    output = tmp_path_factory.mktemp("in-process") / "vectors.parquet"
    report = run_job(corpus.path, output, settings, OPTIONS)
    return output, report


def assert_same_table(got: Path, want: Path) -> None:
    """Two job outputs sorted by id: the same ids, models, sizes and tokens, and the same vectors."""
    a, b = read_output(got), read_output(want)
    assert a.ids == b.ids
    assert a.models == b.models and a.dimensions == b.dimensions and a.tokens == b.tokens
    assert a.schema == b.schema
    for row_id in a.ids:
        np.testing.assert_allclose(a.vectors[row_id], b.vectors[row_id], atol=1e-5, err_msg=row_id)


def error_codes(path: Path) -> dict[tuple[str | None, int], str]:
    return {(entry["id"], entry["line"]): entry["error"]["code"] for entry in read_errors(path)}


# ---- (1) 1,000 mixed rows in-process equal the server's answers ---------------------------------------------------


@pytest.mark.timeout(240)
def test_a_thousand_mixed_rows_equal_the_servers_answers(
    in_process: tuple[Path, JobReport], reference: dict[str, np.ndarray], corpus: Corpus, server: TestClient
) -> None:
    output, report = in_process
    assert report.finished and report.model == MODEL
    assert (report.embedded, report.errors, report.skipped) == (len(corpus.good), len(corpus.bad), 0)
    assert len(corpus.good) + len(corpus.bad) == 1000
    got = read_output(output)
    assert set(got.ids) == set(corpus.good)  # every good row, and no bad one
    assert got.models == {MODEL}
    assert set(got.dimensions.values()) == {64}
    assert got.schema.field("vector").type == pa.list_(pa.field("element", pa.float32()))
    assert got.schema.field("id").type == pa.string()
    for row_id, expected in reference.items():
        np.testing.assert_allclose(got.vectors[row_id], expected, atol=1e-5, err_msg=row_id)
    # Tokens: the job's per-row counts add up to what the server bills for the same inputs.
    billed = 0
    ids = list(corpus.good)
    for start in range(0, len(ids), 100):
        body = {"input": [corpus.good[row_id] for row_id in ids[start : start + 100]], **HTTP_OPTIONS}
        billed += server.post("/v1/embeddings", json=body).json()["usage"]["prompt_tokens"]
    assert sum(got.tokens.values()) == billed
    assert not parts_folder(output).exists()


def test_bad_rows_are_in_the_errors_file_with_the_servers_reasons(
    in_process: tuple[Path, JobReport], corpus: Corpus, server: TestClient
) -> None:
    output, _ = in_process
    errors = read_errors(Path(f"{output}.errors.jsonl"))
    by_key = {(entry["id"], entry["line"]): entry["error"] for entry in errors}
    assert set(by_key) == set(corpus.bad)
    assert len(errors) == len(by_key)  # each bad row once
    for key, code in corpus.bad.items():
        error = by_key[key]
        assert set(error) == {"message", "type", "param", "code"}
        if code:  # rows that are not rows: bad JSON, no id, a repeated id
            assert error["code"] == code and error["type"] == "invalid_request_error"
            continue
        expected = http_error(server, corpus.refused[str(key[0])], **HTTP_OPTIONS)
        assert (error["type"], error["code"]) == (expected["type"], expected["code"]), key
        assert error["param"] == expected["param"].replace("input[0]", "input", 1), key
        assert without_param(error["message"], error["param"]) == without_param(expected["message"], expected["param"])
    reasons = {str(key[0]): by_key[key]["message"] for key in corpus.bad if key[0]}
    assert "could not be decoded" in reasons["row-0333"]
    assert "could not be read" in reasons["row-0480"]
    assert f"MAX_LENGTH={MAX_LENGTH}" in reasons["row-0610"] and "truncate is false" in reasons["row-0610"]
    assert "already the id of line 2" in reasons["row-0001"]


# ---- (2) an interrupted job, resumed, equals an uninterrupted one ------------------------------------------------


@pytest.mark.timeout(240)
def test_an_interrupted_job_resumed_equals_an_uninterrupted_run(
    tmp_path: Path,
    settings: Settings,
    corpus: Corpus,
    in_process: tuple[Path, JobReport],
) -> None:
    output = tmp_path / "vectors.parquet"
    options = JobOptions(instruction=JOB_INSTRUCTION, truncate=False, batch_size=32, rows_per_part=40, progress=False)
    first = run_job(corpus.path, output, settings, options, stop_after_batches=3)
    assert not first.finished and not output.exists()
    # 3 batches of 32 rows done, parts of 40 written: 80 rows kept, the 16 not yet in a part lost (as by a kill).
    kept = pq.read_table(parts_folder(output))
    assert kept.num_rows == 80
    assert set(kept.column("id").to_pylist()) <= set(corpus.good)

    second = run_job(corpus.path, output, settings, options)
    assert second.finished and second.skipped == 80
    assert second.embedded == len(corpus.good) - 80
    assert_same_table(output, in_process[0])
    assert error_codes(Path(f"{output}.errors.jsonl")) == error_codes(Path(f"{in_process[0]}.errors.jsonl"))
    assert not parts_folder(output).exists()

    finished = pq.read_table(output)
    third = run_job(corpus.path, output, settings, options)
    assert (third.embedded, third.skipped) == (0, len(corpus.good))  # a finished job reruns as a no-op
    assert pq.read_table(output).equals(finished)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_cli_job_resumes_to_the_same_table(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    import json
    import random

    rng = random.Random(7)
    source = tmp_path / "texts.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"t{i:05d}", "input": text(rng, 20, 60)}) + "\n" for i in range(ROWS)),
        encoding="utf-8",
    )
    output = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "embedding_api", "batch", str(source), str(output)]
    command += ["--batch-size", "4", "--part-rows", "8"]
    env = cli_env(MODEL_PATH=str(tiny_model_dir), DEVICE="cpu", LOG_LEVEL="warning")
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            if len(list(parts_folder(output).glob("part-*.parquet"))) >= 3:
                break
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it could be killed"
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert not output.exists()
    kept = pq.read_table(parts_folder(output)).num_rows  # only whole parts: readable as they are
    assert 24 <= kept < ROWS

    # Resumed with full batches (the batch size is not part of what a job is).
    resumed = subprocess.run(
        [*command, "--batch-size", "64"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"({kept} already there" in resumed.stderr
    reference = tmp_path / "uninterrupted.parquet"
    run_job(source, reference, make_settings(tiny_model_dir), JobOptions(progress=False), loader=lambda *_: tiny_family)
    assert_same_table(output, reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_keeps_the_finished_rows_and_says_how_to_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json
    import random

    rng = random.Random(8)
    source = tmp_path / "texts.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"t{i:05d}", "input": text(rng, 20, 60)}) + "\n" for i in range(ROWS)),
        encoding="utf-8",
    )
    output = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "embedding_api", "batch", str(source), str(output), "--batch-size", "4"]
    command += ["--part-rows", "50"]
    env = cli_env(MODEL_PATH=str(tiny_model_dir), DEVICE="cpu", LOG_LEVEL="warning")
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and job.poll() is None:
            if len(list(parts_folder(output).glob("part-*.parquet"))) >= 2:
                break
            time.sleep(0.02)
        assert job.poll() is None, "the job ended before it could be interrupted"
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130
    assert "Traceback" not in stderr and "Task was destroyed" not in stderr
    assert f"interrupted: the rows so far are in {output}.parts/; run the same command again to resume" in stderr
    kept = pq.read_table(parts_folder(output)).column("id").to_pylist()
    assert len(kept) >= 100 and len(set(kept)) == len(kept)
    resumed = subprocess.run(
        [*command, "--batch-size", "64"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{ROWS - len(kept)} rows embedded" in resumed.stderr and f"({len(kept)} already there" in resumed.stderr
    assert sorted(pq.read_table(output).column("id").to_pylist()) == [f"t{i:05d}" for i in range(ROWS)]


# ---- (3) a folder of images, (4) a Parquet input -------------------------------------------------------------------


def test_a_folder_of_images_keyed_by_relative_path(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily, server: TestClient
) -> None:
    folder = tmp_path / "photos"
    files = {
        "z.png": image_bytes(make_image(40, 30, seed=1)),
        "a/x.png": image_bytes(make_image(64, 48, seed=2)),
        "a/b/y.jpg": image_bytes(make_image(50, 70, seed=3), "JPEG"),
        "a/b/broken.png": b"not an image at all",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not media")
    (folder / ".hidden.png").write_bytes(files["z.png"])
    output = tmp_path / "photos.parquet"
    options = JobOptions(dimensions=32, progress=False)
    report = run_job(folder, output, make_settings(tiny_model_dir), options, loader=lambda *_: tiny_family)
    assert (report.embedded, report.errors) == (3, 1)
    got = read_output(output)
    assert got.ids == ["a/b/y.jpg", "a/x.png", "z.png"]
    assert set(got.dimensions.values()) == {32}
    mimes = {"a/b/y.jpg": "image/jpeg", "a/x.png": "image/png", "z.png": "image/png"}
    inputs = [{"type": "image", "data": data_uri(files[row_id], mimes[row_id])} for row_id in got.ids]
    expected = http_vectors(server, inputs, dimensions=32)
    for row_id, vector in zip(got.ids, expected, strict=True):
        np.testing.assert_allclose(got.vectors[row_id], vector, atol=1e-5, err_msg=row_id)
    (error,) = read_errors(Path(f"{output}.errors.jsonl"))
    assert error["id"] == "a/b/broken.png" and error["line"] == 1  # the first file in path order
    assert error["error"]["code"] == "media_decode" and error["error"]["param"] == "input"


def test_a_parquet_input_with_fused_parts_and_float16_vectors(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily, server: TestClient
) -> None:
    image = data_uri(image_bytes(make_image(48, 48, seed=9)))
    inputs: list[Any] = [
        [{"type": "text", "text": "a red bicycle"}],
        [{"type": "image", "data": image}],
        [{"type": "text", "text": "a cat on a sofa"}, {"type": "image", "data": image}],
        [{"type": "text", "data": "the text under `data`"}],
    ]
    part = pa.struct([("type", pa.string()), ("text", pa.string()), ("data", pa.string())])
    table = pa.table(
        {
            "id": pa.array([10, 11, 12, 13, None, 15], pa.int64()),
            "input": pa.array([*inputs, [{"type": "text", "text": "no id"}], []], pa.list_(part)),
        }
    )
    source = tmp_path / "rows.parquet"
    pq.write_table(table, source)
    output = tmp_path / "out.parquet"
    options = JobOptions(precision="float16", batch_size=2, progress=False)
    report = run_job(source, output, make_settings(tiny_model_dir), options, loader=lambda *_: tiny_family)
    assert (report.embedded, report.errors) == (4, 2)
    got = read_output(output)
    assert got.ids == ["10", "11", "12", "13"]
    assert got.schema.field("vector").type == pa.list_(pa.field("element", pa.float16()))
    expected = http_vectors(server, inputs)
    for row_id, vector in zip(got.ids, expected, strict=True):
        np.testing.assert_allclose(got.vectors[row_id], vector, atol=2e-3, err_msg=row_id)  # float16: ~3 digits
    errors = {entry["line"]: entry for entry in read_errors(Path(f"{output}.errors.jsonl"))}
    assert errors[5]["error"]["code"] == "missing_id"
    assert errors[6]["id"] == "15" and "at least one part" in errors[6]["error"]["message"]


# ---- (5) the same 1,000-row job on Ray Data --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_thousand_rows_on_ray_equal_the_in_process_job(
    local_ray: None, tmp_path: Path, settings: Settings, corpus: Corpus, in_process: tuple[Path, JobReport]
) -> None:
    from embedding_api.jobs.ray_runner import run_ray_job

    output = tmp_path / "ray.parquet"
    report = run_ray_job(corpus.path, output, settings, OPTIONS, actors=1)
    assert report.finished and (report.embedded, report.errors) == (len(corpus.good), len(corpus.bad))
    assert_same_table(output, in_process[0])
    assert error_codes(Path(f"{output}.errors.jsonl")) == error_codes(Path(f"{in_process[0]}.errors.jsonl"))
    assert not parts_folder(output).exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_resumes_a_job_and_embeds_only_the_rows_not_done(
    local_ray: None,
    tmp_path: Path,
    settings: Settings,
    corpus: Corpus,
    in_process: tuple[Path, JobReport],
) -> None:
    from embedding_api.jobs.ray_runner import run_ray_job

    output = tmp_path / "resumed.parquet"
    options = JobOptions(instruction=JOB_INSTRUCTION, truncate=False, batch_size=50, rows_per_part=100, progress=False)
    run_job(corpus.path, output, settings, options, stop_after_batches=5)
    kept = pq.read_table(parts_folder(output)).num_rows
    assert kept == 200
    report = run_ray_job(corpus.path, output, settings, options, actors=1)
    assert (report.skipped, report.embedded) == (kept, len(corpus.good) - kept)
    assert_same_table(output, in_process[0])


# ---- (6) the command line --------------------------------------------------------------------------------------------


def run_batch(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedding_api", "batch", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_the_batch_command_writes_parquet_and_exits_0(tmp_path: Path, tiny_model_dir: Path, server: TestClient) -> None:
    lines = [f'{{"id": "q{i}", "input": "question number {i}"}}' for i in range(20)] + ['{"id": "q3", "input": "x"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_batch(
        "in.jsonl",
        "out.parquet",
        "--instruction",
        "Answer it",
        cwd=tmp_path,
        MODEL_PATH=str(tiny_model_dir),
        DEVICE="cpu",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "20 rows embedded into out.parquet" in result.stderr and "1 errors in out.parquet.errors.jsonl" in result.stderr
    )
    got = read_output(tmp_path / "out.parquet")
    assert got.ids == sorted(f"q{i}" for i in range(20))
    expected = http_vectors(server, [f"question number {i}" for i in range(20)], instruction="Answer it")
    for i, vector in enumerate(expected):
        np.testing.assert_allclose(got.vectors[f"q{i}"], vector, atol=1e-5)
    (error,) = read_errors(tmp_path / "out.parquet.errors.jsonl")
    assert (error["id"], error["line"], error["error"]["code"]) == ("q3", 21, "duplicate_id")


def test_a_missing_input_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_batch("nope.jsonl", "out.parquet", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: INPUT nope.jsonl does not exist"], result.stderr
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.errors.jsonl").exists()
