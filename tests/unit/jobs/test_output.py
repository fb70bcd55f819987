"""`jobs/output.py`: part files while a job runs, the merge into OUTPUT, the resume set and the errors file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.jobs.output import ErrorLog, PartWriter, existing_output, output_schema, parts_folder
from embedding_api.jobs.rows import JobError


def vector(seed: int, size: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def test_parts_are_whole_files_and_the_merge_keeps_every_row_once(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    writer = PartWriter(output, "float32", rows_per_part=2)
    for k in range(5):
        writer.add(f"id{k}", vector(k), "m", 10 + k)
    # two parts of two rows written, the fifth row still buffered
    parts = sorted(p.name for p in parts_folder(output).iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet"]
    assert pq.read_table(parts_folder(output)).num_rows == 4
    assert existing_output(output).ids == {"id0", "id1", "id2", "id3"}
    writer.finish()
    assert not parts_folder(output).exists()
    table = pq.read_table(output)
    assert table.schema == output_schema("float32")
    assert table.column("id").to_pylist() == [f"id{k}" for k in range(5)]
    assert table.column("tokens").to_pylist() == [10, 11, 12, 13, 14]
    assert table.column("dimensions").to_pylist() == [4] * 5
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist()[3], dtype=np.float32), vector(3))


def test_a_resumed_writer_appends_to_the_finished_output(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    first = PartWriter(output, "float16", rows_per_part=10)
    first.add("a", vector(1), "m", 1)
    first.finish()
    second = PartWriter(output, "float16", rows_per_part=10)
    second.add("b", vector(2), "m", 2)
    second.finish()
    table = pq.read_table(output)
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.schema.field("vector").type == pa.list_(pa.field("element", pa.float16()))
    np.testing.assert_allclose(table.column("vector").to_pylist()[1], vector(2), atol=2e-3)


def test_ids_in_both_output_and_parts_are_merged_once(tmp_path: Path) -> None:
    """A run killed after renaming the merged file but before removing the parts leaves rows in both."""
    output = tmp_path / "out.parquet"
    writer = PartWriter(output, "float32", rows_per_part=1)
    writer.add("a", vector(1), "m", 1)
    writer.add("b", vector(2), "m", 2)
    parts = parts_folder(output)
    pq.write_table(pq.read_table(parts), output)
    writer.finish()
    assert sorted(pq.read_table(output).column("id").to_pylist()) == ["a", "b"]


def test_a_half_written_part_is_ignored_and_removed(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    parts = parts_folder(output)
    parts.mkdir()
    (parts / ".part-000000.parquet.tmp").write_bytes(b"PAR1 half written")
    assert existing_output(output).ids == set()
    writer = PartWriter(output, "float32", rows_per_part=5)
    assert not (parts / ".part-000000.parquet.tmp").exists()
    writer.add("a", vector(1), "m", 1)
    writer.finish()
    assert pq.read_table(output).num_rows == 1


def test_a_rerun_must_make_the_same_kind_of_vectors(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    writer = PartWriter(output, "float32", rows_per_part=10)
    writer.add("a", vector(1, size=8), "model-a", 1)
    writer.finish()
    existing = existing_output(output)
    existing.check("model-a", 8, "float32")  # the same: fine
    with pytest.raises(JobError, match="model model-a, not model-b"):
        existing.check("model-b", 8, "float32")
    with pytest.raises(JobError, match="dimensions 8, not 4"):
        existing.check("model-a", 4, "float32")
    with pytest.raises(JobError, match="precision float, not halffloat"):
        existing.check("model-a", 8, "float16")


def test_an_output_that_is_not_ours_stops_the_job(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    output.write_text("hello")
    with pytest.raises(JobError, match="not a Parquet file this job wrote"):
        existing_output(output)
    pq.write_table(pa.table({"key": [1]}), output)
    with pytest.raises(JobError, match="not a Parquet file this job wrote"):
        existing_output(output)


def test_an_empty_job_still_writes_an_output_with_the_schema(tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    PartWriter(output, "float32", rows_per_part=10).finish()
    table = pq.read_table(output)
    assert table.num_rows == 0 and table.schema == output_schema("float32")


def test_the_errors_file_has_the_api_error_shape_and_is_written_anew(tmp_path: Path) -> None:
    path = tmp_path / "errors.jsonl"
    path.write_text('{"old": "run"}\n')
    log = ErrorLog(path)
    log.write("r1", 3, ApiError(ErrorKind.MEDIA_DECODE, "could not be decoded as an image", param="input"))
    log.write(None, 4, ApiError(ErrorKind.INVALID_REQUEST, "line 4 is not valid JSON", code="invalid_json"))
    log.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {
            "id": "r1",
            "line": 3,
            "error": {
                "message": "input: could not be decoded as an image",
                "type": "invalid_request_error",
                "param": "input",
                "code": "media_decode",
            },
        },
        {
            "id": None,
            "line": 4,
            "error": {
                "message": "line 4 is not valid JSON",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_json",
            },
        },
    ]
    assert log.count == 2
