"""A job's input as rows: a JSONL file, a Parquet file or a folder of images and videos, read as a stream.

Each row is an `id` and one `input` in any form `POST /v1/embeddings` takes for one item. A line or row that
cannot be a row (bad JSON, no id, an id seen before) becomes a `BadRow` with an `ApiError`, and reading goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from embedding_api.errors import ApiError, ErrorKind

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"})
PARQUET_BATCH_ROWS = 1024  # rows decoded from a Parquet input at a time


class JobError(Exception):
    """A job that cannot run at all (no input, an unreadable file, a model that does not load): one sentence."""


@dataclass(frozen=True)
class Row:
    """One input to embed: its id, where it sits in the input (1-based) and its `input` as the API takes it."""

    id: str
    line: int
    input: Any


@dataclass(frozen=True)
class BadRow:
    """A line or row that is not a row; it goes to the errors file."""

    id: str | None
    line: int
    error: ApiError


def input_kind(path: Path) -> str:
    """jsonl, parquet or folder; a JobError for anything else."""
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise JobError(f"INPUT {path} does not exist")
    if path.suffix.lower() == ".parquet":
        return "parquet"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise JobError(f"INPUT {path} is neither a .jsonl nor a .parquet file nor a folder")


def count_rows(path: Path) -> int:
    """How many rows the input holds (for the progress bar), without decoding them."""
    kind = input_kind(path)
    if kind == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    if kind == "folder":
        return sum(1 for _ in _media_files(path))
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def read_rows(path: Path) -> Iterator[Row | BadRow]:
    """Every row of the input in order; the first occurrence of an id wins, later ones are BadRows."""
    kind = input_kind(path)
    source = _jsonl(path) if kind == "jsonl" else _parquet(path) if kind == "parquet" else _folder(path)
    seen: dict[str, int] = {}  # the one thing that grows with the input: a duplicate can be anywhere
    for row in source:
        if isinstance(row, Row):
            if row.id in seen:
                message = f"{row.id!r} is already the id of line {seen[row.id]}; each id must be unique"
                yield BadRow(row.id, row.line, _bad(message, "id", "duplicate_id"))
                continue
            seen[row.id] = row.line
        yield row


def _bad(message: str, param: str | None, code: str) -> ApiError:
    return ApiError(ErrorKind.INVALID_REQUEST, message, param=param, code=code)


def _row(record: Any, line: int) -> Row | BadRow:
    """A decoded record ({"id": ..., "input": ...}) as a Row, or why it is not one."""
    if not isinstance(record, dict):
        return BadRow(None, line, _bad("each row must be an object with `id` and `input`", None, "invalid_row"))
    raw_id = record.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id.strip():
        return BadRow(None, line, _bad("each row needs a non-empty string or integer id", "id", "missing_id"))
    if record.get("input") is None:
        return BadRow(raw_id, line, _bad("is missing", "input", "missing_input"))
    return Row(raw_id, line, record["input"])


def _jsonl(path: Path) -> Iterator[Row | BadRow]:
    with path.open("rb") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                record = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                yield BadRow(None, number, _bad(f"line {number} is not valid JSON ({exc})", None, "invalid_json"))
                continue
            yield _row(record, number)


def _without_nulls(value: Any) -> Any:
    """A Parquet struct has every field of its type on every row; absent ones come back as None: drop them."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _parquet(path: Path) -> Iterator[Row | BadRow]:
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # not Parquet at all: a job that cannot start
        raise JobError(f"INPUT {path} is not a readable Parquet file ({exc})") from None
    missing = {"id", "input"} - set(source.schema_arrow.names)
    if missing:
        raise JobError(f"INPUT {path} has no {' or '.join(sorted(missing))} column; it needs `id` and `input`")
    number = 0
    for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["id", "input"]):
        for record in batch.to_pylist():
            number += 1
            yield _row({"id": record["id"], "input": _without_nulls(record["input"])}, number)


def _media_files(folder: Path) -> Iterator[Path]:
    """Images and videos below the folder, by relative path (hidden files and other suffixes left out)."""
    for path in sorted(folder.rglob("*"), key=lambda each: each.relative_to(folder).as_posix()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            yield path


def _folder(folder: Path) -> Iterator[Row | BadRow]:
    # file:// URLs read through the same fetcher as the server's (ALLOWED_LOCAL_MEDIA_PATH is set to the folder).
    for number, path in enumerate(_media_files(folder), start=1):
        kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
        yield Row(path.relative_to(folder).as_posix(), number, {"type": kind, "data": path.resolve().as_uri()})
