"""A bulk job in this process: the model loaded as the server loads it, rows fed to its service in full batches.

Each row is embedded as its own one-input request (`EmbeddingService.embed`, the code path of `POST /v1/embeddings`),
all rows of a batch at once: the engine batches them together, and a bad row fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.jobs.output import ErrorLog, Existing, PartWriter, existing_output
from embedding_api.jobs.rows import BadRow, JobError, Row, count_rows, input_kind, read_rows
from embedding_api.service.embeddings import EmbeddingService
from embedding_api.service.options import EmbeddingOptions
from embedding_api.service.runtime import FamilyLoader, Runtime
from embedding_api.settings import Settings

log = logging.getLogger(__name__)
Result = TypeVar("Result")
IN_FLIGHT_BATCHES = 2  # the next batch is parsed and decoded while the device runs the current one


@dataclass(frozen=True)
class JobOptions:
    """What the `batch` command's options ask of every row."""

    model: str | None = None
    instruction: str | None = None
    dimensions: int | None = None
    precision: str = "float32"
    batch_size: int = 64
    truncate: bool = True
    rows_per_part: int = 8192
    progress: bool = True


@dataclass(frozen=True)
class RowResult:
    """One row's vector and tokens, or its error."""

    id: str
    line: int
    vector: np.ndarray | None
    tokens: int
    error: ApiError | None


@dataclass
class JobReport:
    """What a run did."""

    model: str
    embedded: int = 0
    skipped: int = 0  # already in OUTPUT
    errors: int = 0
    seconds: float = 0.0  # the whole run, loading the model included
    embed_seconds: float = 0.0  # from the model being ready to the end
    finished: bool = False  # False: stopped early, OUTPUT.parts/ holds the rows so far


def row_error(error: ApiError) -> ApiError:
    """The service names the row's only input `input[0]`; in a job it is the row's `input`."""
    if error.param is not None and error.param.startswith("input[0]"):
        error.param = "input" + error.param.removeprefix("input[0]")
    return error


class Embedder:
    """One model loaded as the server loads it (`service.runtime`), on an event loop of its own; embeds rows."""

    def __init__(self, settings: Settings, options: JobOptions, loader: FamilyLoader | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embed-job-loop", daemon=True)
        self._thread.start()
        self.runtime: Runtime | None = None
        self._batches: set[asyncio.Task[list[RowResult]]] = set()
        try:
            self.service, self.options = self._call(self._open(settings, options, loader))
        except BaseException:
            self.close()
            raise
        self.model_name = self.service.model_name
        self.dimensions = self.options.dimensions or self.service.family.dimension

    def _call(self, work: Coroutine[Any, Any, Result]) -> Result:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _open(
        self, settings: Settings, options: JobOptions, loader: FamilyLoader | None
    ) -> tuple[EmbeddingService, EmbeddingOptions]:
        runtime = Runtime(settings, loader=loader) if loader is not None else Runtime(settings)
        if runtime.catalog_error is not None:
            raise JobError(runtime.catalog_error)
        try:
            chosen = runtime.served(options.model)
        except ApiError as error:
            raise JobError(f"--model: {error.message}") from None
        runtime.models = [chosen]  # a job loads only the model it uses
        self.runtime = runtime
        await runtime.start()
        while runtime.status == "loading":
            await asyncio.sleep(0.05)
        if runtime.status == "error":
            raise JobError(runtime.detail or "the model failed to load")
        try:
            service = runtime.service_for(chosen.name)
            merged = service.options(
                dimensions=options.dimensions, instruction=options.instruction, truncate=options.truncate
            )
        except ApiError as error:
            raise JobError(f"--{error.param or 'model'}: {error.message}") from None
        return service, merged

    def submit(self, rows: list[Row]) -> Future[list[RowResult]]:
        """Embed the rows, all at once, on the model's loop; the future holds one result per row, in order."""
        return asyncio.run_coroutine_threadsafe(self._embed_rows(rows), self._loop)

    def embed(self, rows: list[Row]) -> list[RowResult]:
        return self.submit(rows).result()

    async def _embed_rows(self, rows: list[Row]) -> list[RowResult]:
        task = asyncio.current_task()
        assert task is not None
        self._batches.add(task)
        try:
            return list(await asyncio.gather(*(self._embed_row(row) for row in rows)))
        finally:
            self._batches.discard(task)

    async def _embed_row(self, row: Row) -> RowResult:
        try:
            answer = await self.service.embed([row.input], self.options)  # the input as one item, not an array
        except ApiError as error:
            return RowResult(row.id, row.line, None, 0, row_error(error))
        except Exception as exc:  # never stop the job: the row is reported like the server's 500
            log.exception("embedding row %r failed", row.id)
            internal = ApiError(ErrorKind.INTERNAL, f"embedding failed: {type(exc).__name__}")
            return RowResult(row.id, row.line, None, 0, internal)
        return RowResult(row.id, row.line, answer.vectors[0], answer.tokens, None)

    async def _stop(self) -> None:
        """Batches still in flight (a Ctrl-C) are cancelled before the engine stops under them."""
        for task in self._batches:
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.stop()
            self.runtime = None

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        # The loop is left open: a CPU-pool job finishing late may still post its result to it.


def job_settings(settings: Settings, input_path: Path) -> Settings:
    """A folder's files are read as file:// URLs through the server's fetcher, allowed below that folder only."""
    if input_path.is_dir():
        return settings.model_copy(update={"allowed_local_media_path": str(input_path.resolve())})
    return settings


def batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class JobSink:
    """The results side shared by both runners: the resume set, part files, errors file and progress bar."""

    def __init__(self, input_path: Path, output: Path, errors: Path, options: JobOptions) -> None:
        input_kind(input_path)  # a missing INPUT is an error before anything is loaded
        if output.is_dir():
            raise JobError(f"OUTPUT {output} is a folder; give a .parquet file name")
        self.input_path, self.output, self.options = input_path, output, options
        self.existing: Existing = existing_output(output)
        self.total = count_rows(input_path)
        self.errors = ErrorLog(errors)
        self.writer = PartWriter(output, options.precision, options.rows_per_part)
        self._bar: tqdm[Any] | None = None
        self.report = JobReport(model="")
        self._ready_at: float | None = None

    @property
    def bar(self) -> tqdm[Any]:
        """Shown from the first row on, so the model's loading lines come before it."""
        if self._bar is None:
            self._bar = tqdm(
                total=self.total, unit="row", file=sys.stderr, disable=not self.options.progress, dynamic_ncols=True
            )
        return self._bar

    def pending(self) -> Iterator[Row]:
        """The input's rows not yet in OUTPUT; bad rows go to the errors file on the way."""
        for row in read_rows(self.input_path):
            if isinstance(row, BadRow):
                self.errors.write(row.id, row.line, row.error)
                self.report.errors += 1
                self.bar.update(1)
            elif row.id in self.existing.ids:
                self.report.skipped += 1
                self.bar.update(1)
            else:
                yield row

    def started(self, model: str, dimensions: int, since: float | None = None) -> None:
        """The model is ready (`since`: when the work began, if earlier): check it against OUTPUT's rows."""
        self.existing.check(model, dimensions, self.options.precision)
        self.errors.open()
        self.report.model = model
        self._ready_at = since if since is not None else time.perf_counter()

    def result(self, result: RowResult, model: str) -> None:
        if result.error is not None or result.vector is None:
            assert result.error is not None
            self.errors.write(result.id, result.line, result.error)
            self.report.errors += 1
        else:
            self.writer.add(result.id, result.vector, model, result.tokens)
            self.report.embedded += 1
        self.bar.update(1)

    def finish(self) -> None:
        self.errors.open()  # a job without errors leaves an empty errors file, not the last run's
        self.writer.finish()
        self.report.finished = True

    def close(self, *, keep_buffered: bool) -> None:
        """Close the files; `keep_buffered` writes the rows not yet in a part (a Ctrl-C keeps its work)."""
        if keep_buffered:
            self.writer.flush()
        self.errors.close()
        if self._bar is not None:
            self._bar.close()
        if self._ready_at is not None:
            self.report.embed_seconds = time.perf_counter() - self._ready_at


def run_job(
    input_path: Path,
    output: Path,
    settings: Settings,
    options: JobOptions,
    *,
    errors: Path | None = None,
    loader: FamilyLoader | None = None,
    stop_after_batches: int | None = None,
) -> JobReport:
    """Embed every row of INPUT not yet in OUTPUT, in this process. `stop_after_batches` stops early as a killed
    job would (the rows not yet in a part are lost): for tests of resuming."""
    started = time.perf_counter()
    sink = JobSink(input_path, output, errors or default_errors_path(output), options)
    embedder: Embedder | None = None
    in_flight: deque[Future[list[RowResult]]] = deque()
    keep_buffered = True  # on an exception (Ctrl-C included) the finished rows are kept
    try:
        embedder = Embedder(job_settings(settings, input_path), options, loader)
        sink.started(embedder.model_name, embedder.dimensions)
        done_batches = 0
        for batch in batches(sink.pending(), options.batch_size):
            in_flight.append(embedder.submit(batch))
            while in_flight and (len(in_flight) >= IN_FLIGHT_BATCHES or in_flight[0].done()):
                for result in in_flight.popleft().result():
                    sink.result(result, embedder.model_name)
                done_batches += 1
                if stop_after_batches is not None and done_batches >= stop_after_batches:
                    keep_buffered = False
                    return sink.report
        while in_flight:
            for result in in_flight.popleft().result():
                sink.result(result, embedder.model_name)
        sink.finish()
    finally:
        for future in in_flight:
            future.cancel()
        if embedder is not None:
            embedder.close()
        sink.close(keep_buffered=keep_buffered)
        sink.report.seconds = time.perf_counter() - started
    return sink.report


def default_errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.jsonl")
