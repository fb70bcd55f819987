"""`jobs/runner.py`: the in-process job on the tiny checkpoint: failures stay with their row, options that cannot
run stop before any row, a row's error names its own field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import EmbeddingFamily
from embedding_api.jobs.rows import JobError, Row
from embedding_api.jobs.runner import Embedder, JobOptions, row_error, run_job
from tests.conftest import make_settings
from tests.fakes import RecordingFamily


def write_rows(path: Path, inputs: list[object]) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i:02d}", "input": x}) + "\n" for i, x in enumerate(inputs)))
    return path


def test_a_rows_error_names_its_input_not_input_0() -> None:
    def param(value: str | None) -> str | None:
        return row_error(ApiError(ErrorKind.INVALID_REQUEST, "m", param=value)).param

    assert param("input[0]") == "input"
    assert param("input[0].content[1]") == "input.content[1]"
    assert param("input[0][2].image_url") == "input[2].image_url"
    assert param("input") == "input" and param(None) is None and param("dimensions") == "dimensions"


def test_a_device_fault_on_one_row_leaves_its_batch_mates_embedded(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    family = RecordingFamily(tiny_family)
    family.poison = {"poison"}
    texts = [f"row number {i}" for i in range(24)]
    texts[7] = "a poison pill"
    source = write_rows(tmp_path / "in.jsonl", texts)
    output = tmp_path / "out.parquet"
    report = run_job(
        source,
        output,
        make_settings(tiny_model_dir),
        JobOptions(batch_size=24, progress=False),
        loader=lambda *_: family,
    )
    assert (report.embedded, report.errors) == (23, 1)
    assert max(family.batch_sizes) > 1  # the rows did share forward passes
    ids = pq.read_table(output).column("id").to_pylist()
    assert sorted(ids) == [f"r{i:02d}" for i in range(24) if i != 7]
    (error,) = [json.loads(line) for line in Path(f"{output}.errors.jsonl").read_text().splitlines()]
    assert error["id"] == "r07" and error["line"] == 8
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "internal"


def test_embedder_rows_match_one_input_requests(tiny_model_dir: Path, tiny_family: EmbeddingFamily) -> None:
    """A row's input is ONE input: a list is a fused input, not an array of inputs."""
    embedder = Embedder(make_settings(tiny_model_dir), JobOptions(), loader=lambda *_: tiny_family)
    try:
        fused, a, b = embedder.embed([Row("f", 1, ["a cat", "a sofa"]), Row("a", 2, "a cat"), Row("b", 3, "a sofa")])
    finally:
        embedder.close()
    assert fused.vector is not None and a.vector is not None and b.vector is not None
    assert fused.vector.shape == (64,)
    assert not np.allclose(fused.vector, a.vector, atol=1e-3) and not np.allclose(fused.vector, b.vector, atol=1e-3)
    assert fused.tokens > a.tokens


def test_options_the_model_cannot_take_stop_the_job_before_any_row(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    source = write_rows(tmp_path / "in.jsonl", ["a"])
    settings = make_settings(tiny_model_dir)
    with pytest.raises(JobError, match=r"--dimensions: must be between 1 and 64 for this model, got 65"):
        run_job(source, tmp_path / "o.parquet", settings, JobOptions(dimensions=65), loader=lambda *_: tiny_family)
    with pytest.raises(JobError, match=r"--model: 'other' is not served here; this server serves 'Qwen3-VL"):
        run_job(source, tmp_path / "o.parquet", settings, JobOptions(model="other"), loader=lambda *_: tiny_family)
    assert not (tmp_path / "o.parquet").exists()


def test_a_model_that_does_not_load_is_a_job_error(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", ["a"])
    settings = make_settings(tmp_path / "no-model-here")
    with pytest.raises(JobError):
        run_job(source, tmp_path / "o.parquet", settings, JobOptions(progress=False))


def test_a_rerun_with_other_dimensions_is_refused(
    tmp_path: Path, tiny_model_dir: Path, tiny_family: EmbeddingFamily
) -> None:
    source = write_rows(tmp_path / "in.jsonl", ["a", "b"])
    output = tmp_path / "o.parquet"
    settings = make_settings(tiny_model_dir)
    run_job(source, output, settings, JobOptions(dimensions=16, progress=False), loader=lambda *_: tiny_family)
    errors = Path(f"{output}.errors.jsonl")
    assert errors.read_text() == ""  # a finished job without bad rows leaves an empty errors file
    errors.write_text("the last run's errors\n")
    with pytest.raises(JobError, match="dimensions 16, not 32"):
        run_job(source, output, settings, JobOptions(dimensions=32, progress=False), loader=lambda *_: tiny_family)
    assert pq.read_table(output).column("dimensions").to_pylist() == [16, 16]
    assert errors.read_text() == "the last run's errors\n"  # a job that could not start touched nothing
