"""`jobs/rows.py`: JSONL, Parquet and folder inputs as rows; bad lines, missing and repeated ids as BadRows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding_api.jobs.rows import BadRow, JobError, Row, count_rows, input_kind, read_rows


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def codes(rows: list[Row | BadRow]) -> list[tuple[str | None, int, str]]:
    return [(row.id, row.line, row.error.code) for row in rows if isinstance(row, BadRow)]


def test_jsonl_rows_keep_their_input_and_line(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        '{"id": "a", "input": "a text"}',
        "",
        '{"id": 7, "input": [{"type": "text", "text": "t"}, {"type": "image", "data": "data:..."}]}',
        '{"id": "c", "input": {"content": "x", "instruction": "y"}}',
    )
    rows = list(read_rows(source))
    assert rows == [
        Row("a", 1, "a text"),
        Row("7", 3, [{"type": "text", "text": "t"}, {"type": "image", "data": "data:..."}]),  # blank line 2 skipped
        Row("c", 4, {"content": "x", "instruction": "y"}),
    ]
    assert count_rows(source) == 3


def test_bad_lines_become_bad_rows_and_reading_goes_on(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        '{"id": "a", "input": "one"}',
        '{"id": "b", "input": ',
        '{"input": "no id"}',
        '{"id": "", "input": "blank id"}',
        '{"id": true, "input": "a boolean is no id"}',
        '["not", "an", "object"]',
        '{"id": "c"}',
        '{"id": "a", "input": "again"}',
        b"\xff\xfe".decode("latin-1"),
        '{"id": "d", "input": "last"}',
    )
    rows = list(read_rows(source))
    assert [row.id for row in rows if isinstance(row, Row)] == ["a", "d"]
    assert codes(rows) == [
        (None, 2, "invalid_json"),
        (None, 3, "missing_id"),
        (None, 4, "missing_id"),
        (None, 5, "missing_id"),
        (None, 6, "invalid_row"),
        ("c", 7, "missing_input"),
        ("a", 8, "duplicate_id"),
        (None, 9, "invalid_json"),
    ]
    duplicate = next(row for row in rows if isinstance(row, BadRow) and row.line == 8)
    assert duplicate.error.param == "id" and "line 1" in duplicate.error.message
    assert duplicate.error.body()["error"]["type"] == "invalid_request_error"


def test_parquet_rows_drop_the_null_fields_of_structs(tmp_path: Path) -> None:
    part = pa.struct([("type", pa.string()), ("text", pa.string()), ("data", pa.string())])
    table = pa.table(
        {
            "id": pa.array(["x", "y", None], pa.string()),
            "input": pa.array(
                [[{"type": "text", "text": "hi", "data": None}], [{"type": "image", "data": "abc"}], []],
                pa.list_(part),
            ),
            "other": pa.array([1, 2, 3]),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    rows = list(read_rows(tmp_path / "in.parquet"))
    assert rows[:2] == [Row("x", 1, [{"type": "text", "text": "hi"}]), Row("y", 2, [{"type": "image", "data": "abc"}])]
    assert codes(rows) == [(None, 3, "missing_id")]
    assert count_rows(tmp_path / "in.parquet") == 3


def test_a_parquet_string_column_is_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "input": ["first", "second"]}), tmp_path / "in.parquet")
    assert list(read_rows(tmp_path / "in.parquet")) == [Row("1", 1, "first"), Row("2", 2, "second")]


def test_a_parquet_file_without_the_columns_cannot_run(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": [1], "text": ["a"]}), tmp_path / "in.parquet")
    with pytest.raises(JobError, match="no id or input column"):
        list(read_rows(tmp_path / "in.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(JobError, match="not a readable Parquet file"):
        list(read_rows(tmp_path / "junk.parquet"))


def test_a_folder_gives_media_files_by_relative_path(tmp_path: Path) -> None:
    for name in ("b.png", "a/x.JPG", "a/clip.mp4", "notes.txt", ".hidden.png", ".cache/y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"...")
    rows = list(read_rows(tmp_path))
    assert [(row.id, row.line) for row in rows] == [("a/clip.mp4", 1), ("a/x.JPG", 2), ("b.png", 3)]
    assert isinstance(rows[0], Row) and isinstance(rows[1], Row)
    assert rows[0].input == {"type": "video", "data": (tmp_path / "a/clip.mp4").resolve().as_uri()}
    assert rows[1].input == {"type": "image", "data": (tmp_path / "a/x.JPG").resolve().as_uri()}
    assert count_rows(tmp_path) == 3


def test_what_is_not_an_input(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist"):
        input_kind(tmp_path / "missing.jsonl")
    (tmp_path / "rows.csv").write_text("id,input\n")
    with pytest.raises(JobError, match=r"neither a \.jsonl nor a \.parquet"):
        input_kind(tmp_path / "rows.csv")
