"""Where a job's results go: Parquet part files while it runs, one Parquet file at the end, and the errors file.

While a job runs, finished rows are written as closed Parquet files in `OUTPUT.parts/` (each written under a
hidden name, then renamed: a killed job leaves only whole parts). At the end OUTPUT and the parts are merged into
OUTPUT and the folder is removed. A rerun skips every id found in OUTPUT or in `OUTPUT.parts/`, so an interrupted
job resumes where its last part ended. The errors file is written anew by each run: every row not in OUTPUT is
tried again, so it always lists the rows that failed, once each.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedding_api.errors import ApiError
from embedding_api.jobs.rows import JobError

PRECISIONS = {"float32": pa.float32(), "float16": pa.float16()}


def output_schema(precision: str) -> pa.Schema:
    """id, vector (list of float32 or float16), model, dimensions, tokens."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.field("element", PRECISIONS[precision]))),
            pa.field("model", pa.string()),
            pa.field("dimensions", pa.int32()),
            pa.field("tokens", pa.int32()),
        ]
    )


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _part_files(output: Path) -> list[Path]:
    folder = parts_folder(output)
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _sources(output: Path) -> list[Path]:
    """OUTPUT (when there) then its parts, in the order they were written."""
    return ([output] if output.exists() else []) + _part_files(output)


@dataclass
class Existing:
    """What an earlier run of this job already wrote."""

    ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    dimensions: set[int] = field(default_factory=set)
    vector_types: set[str] = field(default_factory=set)

    def check(self, model: str, dimensions: int, precision: str) -> None:
        """A rerun must make the same kind of vectors as the rows it keeps."""
        wanted = str(PRECISIONS[precision])
        for what, found, now in (
            ("model", self.models, model),
            ("dimensions", self.dimensions, dimensions),
            ("precision", self.vector_types, wanted),
        ):
            others = sorted(str(value) for value in found if value != now)
            if others:
                raise JobError(
                    f"OUTPUT already holds rows with {what} {', '.join(others)}, not {now}: resume with the same "
                    "options, or write to another OUTPUT"
                )


def existing_output(output: Path) -> Existing:
    """The ids (and kinds of vectors) already in OUTPUT and its parts folder; empty for a new job."""
    existing = Existing()
    for path in _sources(output):
        try:
            source = pq.ParquetFile(path)
            vector_type = source.schema_arrow.field("vector").type
            for batch in source.iter_batches(columns=["id", "model", "dimensions"]):
                existing.ids.update(batch.column("id").to_pylist())
                existing.models.update(pc.unique(batch.column("model")).to_pylist())
                existing.dimensions.update(pc.unique(batch.column("dimensions")).to_pylist())
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise JobError(
                f"{path} is not a Parquet file this job wrote ({exc}); move it away or pick another OUTPUT"
            ) from None
        if source.metadata.num_rows > 0:
            existing.vector_types.add(str(vector_type.value_type))
    return existing


def vectors_array(vectors: list[np.ndarray], precision: str) -> pa.ListArray:
    """Rows of one float type as a list column, without a Python float per value."""
    dtype = np.float16 if precision == "float16" else np.float32
    lengths = np.fromiter((len(vector) for vector in vectors), dtype=np.int32, count=len(vectors))
    offsets = np.concatenate([np.zeros(1, dtype=np.int32), np.cumsum(lengths, dtype=np.int32)])
    flat = np.concatenate(vectors).astype(dtype, copy=False) if vectors else np.zeros(0, dtype=dtype)
    values = pa.array(flat, type=PRECISIONS[precision])
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=output_schema(precision).field("vector").type)


class PartWriter:
    """Buffers finished rows; writes a part every `rows_per_part` rows or `seconds_per_part` seconds."""

    def __init__(self, output: Path, precision: str, rows_per_part: int, seconds_per_part: float = 60.0) -> None:
        self.output = output
        self.precision = precision
        self.schema = output_schema(precision)
        self.rows_per_part = rows_per_part
        self.seconds_per_part = seconds_per_part
        self.folder = parts_folder(output)
        self.written = 0
        self._ids: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._models: list[str] = []
        self._tokens: list[int] = []
        self._last_flush = time.monotonic()
        parts = _part_files(output)
        self._next = int(parts[-1].stem.removeprefix("part-")) + 1 if parts else 0
        for stale in self.folder.glob(".part-*") if self.folder.is_dir() else []:
            stale.unlink()  # a part a killed run did not finish writing

    def add(self, row_id: str, vector: np.ndarray, model: str, tokens: int) -> None:
        self._ids.append(row_id)
        self._vectors.append(vector)
        self._models.append(model)
        self._tokens.append(tokens)
        full = len(self._ids) >= self.rows_per_part
        if full or time.monotonic() - self._last_flush >= self.seconds_per_part:
            self.flush()

    def table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [
                pa.array(self._ids, pa.string()),
                vectors_array(self._vectors, self.precision),
                pa.array(self._models, pa.string()),
                pa.array([len(vector) for vector in self._vectors], pa.int32()),
                pa.array(self._tokens, pa.int32()),
            ],
            schema=self.schema,
        )

    def flush(self) -> None:
        """Write the buffered rows as one closed part file (hidden name first, then renamed)."""
        self._last_flush = time.monotonic()
        if not self._ids:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"part-{self._next:06d}.parquet"
        hidden = self.folder / f".{final.name}.tmp"
        pq.write_table(self.table(), hidden)
        os.replace(hidden, final)
        self._next += 1
        self.written += len(self._ids)
        self._ids, self._vectors, self._models, self._tokens = [], [], [], []

    def finish(self) -> None:
        """Flush, then merge OUTPUT and the parts into OUTPUT (each id once) and remove the parts folder."""
        self.flush()
        parts = _part_files(self.output)
        if self.output.exists() and not parts:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        merged = self.output.with_name(f".{self.output.name}.merging")
        written: set[str] = set()  # a run killed between the rename and the removal left ids in both
        with pq.ParquetWriter(merged, self.schema) as writer:
            for path in _sources(self.output):
                for batch in pq.ParquetFile(path).iter_batches():
                    table = pa.Table.from_batches([batch]).cast(self.schema)
                    keep = [row_id not in written for row_id in table.column("id").to_pylist()]
                    written.update(table.column("id").to_pylist())
                    writer.write_table(table.filter(pa.array(keep, pa.bool_())))
        os.replace(merged, self.output)
        shutil.rmtree(self.folder, ignore_errors=True)


class ErrorLog:
    """The errors file: one JSON object a line, {id, line, error: {message, type, param, code}}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: IO[bytes] | None = None

    def open(self) -> None:
        """Start the file anew (this run tries every row not in OUTPUT again); a job that cannot start leaves the
        last run's file as it was."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")

    def write(self, row_id: str | None, line: int, error: ApiError) -> None:
        self.open()
        assert self._file is not None
        record = {"id": row_id, "line": line, "error": error.body()["error"]}
        self._file.write(orjson.dumps(record) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
