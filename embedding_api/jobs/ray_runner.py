"""The same bulk job on Ray Data: an actor pool, each actor loading the model once and embedding whole batches
with the in-process code path (`runner.Embedder`).

The driver reads INPUT with `rows.read_rows` (bad JSON, missing and duplicate ids need the whole input in order),
leaves out the ids already in OUTPUT, and stages the rows to embed as Parquet next to OUTPUT; Ray Data reads that
file (`read_parquet`), maps it through the actors and streams the results back, which the driver writes with the
in-process job's part files and errors file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.jobs.output import parts_folder, vectors_array
from embedding_api.jobs.rows import JobError, Row
from embedding_api.jobs.runner import (
    IN_FLIGHT_BATCHES,
    Embedder,
    JobOptions,
    JobReport,
    JobSink,
    RowResult,
    default_errors_path,
    job_settings,
)
from embedding_api.settings import Settings

STAGED_ROWS_PER_GROUP = 1024
STAGED_SCHEMA = pa.schema([("id", pa.string()), ("line", pa.int64()), ("input", pa.string())])


def _error_from_json(text: str) -> ApiError:
    """An ApiError back from the error body an actor sent."""
    body = orjson.loads(text)
    kind = next((each for each in ErrorKind if each.value == body["kind"]), ErrorKind.INTERNAL)
    return ApiError(kind, body["message"], param=body["param"], code=body["code"])


class EmbedActor:
    """One Ray Data actor: the model loaded once in the constructor; `__call__` embeds a batch of staged rows."""

    def __init__(self, settings: Settings, options: JobOptions) -> None:
        self.embedder = Embedder(settings, options)
        self.precision = options.precision

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, lines, inputs = (batch.column(name).to_pylist() for name in ("id", "line", "input"))
        rows = [Row(row_id, line, orjson.loads(text)) for row_id, line, text in zip(ids, lines, inputs, strict=True)]
        results = self.embedder.embed(rows)
        return results_table(results, self.embedder.model_name, self.embedder.dimensions, self.precision)


def results_table(results: list[RowResult], model: str, dimensions: int, precision: str) -> pa.Table:
    """An actor's answer: one row per input row, with its vector or its error (as JSON)."""
    good = [result.vector is not None for result in results]
    vectors = vectors_array([result.vector for result in results if result.vector is not None], precision)
    errors = [
        None
        if result.error is None
        else orjson.dumps(
            {
                "kind": result.error.kind.value,
                "message": result.error.message,
                "param": result.error.param,
                "code": result.error.code,
            }
        ).decode()
        for result in results
    ]
    # Rows with an error have no vector: spread the good vectors over the rows, nulls elsewhere.
    positions, k = [], 0
    for is_good in good:
        positions.append(k if is_good else None)
        k += is_good
    vector_column = vectors.take(pa.array(positions, pa.int64()))
    return pa.table(
        {
            "id": pa.array([result.id for result in results], pa.string()),
            "line": pa.array([result.line for result in results], pa.int64()),
            "vector": vector_column,
            "model": pa.array([model] * len(results), pa.string()),
            "dimensions": pa.array([dimensions] * len(results), pa.int32()),
            "tokens": pa.array([result.tokens for result in results], pa.int32()),
            "error": pa.array(errors, pa.string()),
        }
    )


def stage(rows: Iterable[Row], path: Path) -> int:
    """Write the rows to embed as Parquet (id, line, input as JSON) for Ray Data to read; how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    chunk: list[Row] = []
    with pq.ParquetWriter(path, STAGED_SCHEMA) as writer:

        def write() -> None:
            columns: list[list[Any]] = [
                [row.id for row in chunk],
                [row.line for row in chunk],
                [orjson.dumps(row.input).decode() for row in chunk],
            ]
            writer.write_table(pa.Table.from_arrays([pa.array(c) for c in columns], schema=STAGED_SCHEMA))

        for row in rows:
            chunk.append(row)
            count += 1
            if len(chunk) == STAGED_ROWS_PER_GROUP:
                write()
                chunk = []
        if chunk:
            write()
    return count


def run_ray_job(
    input_path: Path,
    output: Path,
    settings: Settings,
    options: JobOptions,
    *,
    errors: Path | None = None,
    actors: int | None = None,
) -> JobReport:
    """Embed every row of INPUT not yet in OUTPUT on Ray Data (the running Ray instance, or a local one)."""
    import ray

    started = time.perf_counter()
    sink = JobSink(input_path, output, errors or default_errors_path(output), options)
    staged = parts_folder(output) / "_ray-input.parquet"  # `_`: not a part, and left out by Parquet readers
    keep_buffered = True
    try:
        if stage(sink.pending(), staged):
            if not ray.is_initialized():
                ray.init(include_dashboard=False)  # RAY_ADDRESS, when set, names a running cluster
            ray.data.DataContext.get_current().enable_progress_bars = False  # ours is on stderr already
            began = time.perf_counter()  # Ray's rate counts the actors' start, as they load while rows flow
            devices = int(ray.cluster_resources().get("GPU", 0))
            gpus = 1 if settings.device.startswith("cuda") or (settings.device == "auto" and devices) else 0
            dataset = ray.data.read_parquet(str(staged)).map_batches(
                EmbedActor,
                fn_constructor_kwargs={"settings": job_settings(settings, input_path), "options": options},
                batch_size=options.batch_size,
                batch_format="pyarrow",
                # Two batches per actor at once, as in-process: one is decoded while the device runs the other.
                compute=ray.data.ActorPoolStrategy(
                    size=actors or (max(1, devices) if gpus else 1),
                    max_concurrent_calls_per_actor=IN_FLIGHT_BATCHES,
                    enable_true_multi_threading=True,
                ),
                num_gpus=gpus or None,
            )
            try:
                for answer in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                    batch = cast(pa.Table, answer)
                    if not sink.report.model and batch.num_rows:
                        model, dimensions = batch.column("model")[0].as_py(), batch.column("dimensions")[0].as_py()
                        sink.started(model, dimensions, since=began)
                    _consume(sink, batch)
            except ray.exceptions.RayError as exc:  # an actor that could not load the model, or died
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise JobError(f"the Ray job failed: {last}") from None
        sink.finish()
        keep_buffered = False
    finally:
        staged.unlink(missing_ok=True)
        sink.close(keep_buffered=keep_buffered)
        sink.report.seconds = time.perf_counter() - started
    return sink.report


def _consume(sink: JobSink, batch: pa.Table) -> None:
    """An actor's answer to the part files and the errors file."""
    model = sink.report.model
    vectors = batch.column("vector").combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False)  # no Python float per value
    offsets = vectors.offsets.to_numpy()
    for index, (row_id, line, tokens, error) in enumerate(
        zip(
            batch.column("id").to_pylist(),
            batch.column("line").to_pylist(),
            batch.column("tokens").to_pylist(),
            batch.column("error").to_pylist(),
            strict=True,
        )
    ):
        if error is not None:
            sink.result(RowResult(row_id, line, None, 0, _error_from_json(error)), model)
        else:
            vector = flat[offsets[index] : offsets[index + 1]]
            sink.result(RowResult(row_id, line, vector, tokens, None), model)
