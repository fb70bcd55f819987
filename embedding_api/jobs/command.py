"""`python -m embedding_api batch INPUT OUTPUT`: its arguments, and the run with one-line errors and a summary.

Light to import (the parser is built for every command): the runners, and torch with them, load in `batch`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedding_api.settings import Settings

DESCRIPTION = """\
Embed every row of INPUT into the Parquet file OUTPUT (columns id, vector, model, dimensions, tokens), with the
model and settings the server would use (MODEL_PATH / MODELS, limits, .env), in this process (no server).

INPUT is a .jsonl file (one {"id": ..., "input": ...} per line), a .parquet file with `id` and `input` columns,
or a folder of images and videos (id = the file's path inside the folder). `input` is ONE input in any form
POST /v1/embeddings takes: a string, an image or video object, a fused array of parts, {content, instruction}.

A bad row (bad JSON, no id, a repeated id, an image that does not decode, a file that is missing, ...) is written
to the errors file as {id, line, error: {message, type, param, code}} and the job goes on. Rows are written to
OUTPUT.parts/ as the job runs and merged into OUTPUT at the end: rerun the same command after an interruption and
the ids already written are skipped."""


def add_batch_command(commands: Any) -> None:
    """The `batch` subcommand on cli.py's subparsers."""
    parser = commands.add_parser(
        "batch",
        help="embed a JSONL / Parquet file or a folder of images into a Parquet file (resumable)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", type=Path, help="a .jsonl or .parquet file, or a folder of media")
    parser.add_argument("output", metavar="OUTPUT", type=Path, help="the .parquet file to write (or to resume)")
    parser.add_argument("--model", help="which served model (MODELS / MODELS_CONFIG); default: the first")
    parser.add_argument("--instruction", help="the instruction of every row that carries none of its own")
    parser.add_argument("--dimensions", type=int, help="cut the vectors to this size (Matryoshka), re-normalised")
    parser.add_argument("--precision", choices=("float32", "float16"), default="float32", help="the vector type")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows handed to the engine at once (default: MAX_BATCH_SIZE)"
    )
    parser.add_argument("--errors", type=Path, help="the errors file (default: OUTPUT.errors.jsonl)")
    parser.add_argument(
        "--no-truncate", action="store_true", help="refuse inputs over MAX_LENGTH tokens instead of cutting them"
    )
    parser.add_argument(
        "--part-rows",
        type=int,
        default=8192,
        help="rows per part file while the job runs (an interruption loses at most these, or 60 s of work)",
    )
    parser.add_argument("--ray", action="store_true", help="run on Ray Data (RAY_ADDRESS, or a local Ray instance)")
    parser.add_argument("--actors", type=int, help="with --ray: model actors (default: one per GPU, else 1)")


def batch(args: argparse.Namespace, preflight: Callable[[Settings], list[str]] | None = None) -> int:
    """Run the job; 0 when it ran to the end (bad rows included), 1 with one line when it could not run.
    `preflight` is the server's start-up check (DEVICE, MODEL_PATH, the model list), every problem at once."""
    from embedding_api import environment
    from embedding_api.jobs.rows import JobError, input_kind
    from embedding_api.jobs.runner import JobOptions, default_errors_path, run_job
    from embedding_api.observability.logs import configure_logging
    from embedding_api.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    for warning in environment.unknown_key_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    for name in ("batch_size", "dimensions", "part_rows", "actors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return 1
    options = JobOptions(
        model=args.model,
        instruction=args.instruction,
        dimensions=args.dimensions,
        precision=args.precision,
        batch_size=args.batch_size or settings.max_batch_size,
        truncate=not args.no_truncate,
        rows_per_part=args.part_rows,
    )
    errors = args.errors or default_errors_path(args.output)
    try:
        input_kind(args.input)  # a missing INPUT first: no model is loaded for nothing
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = preflight(settings) if preflight is not None else []
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    try:
        if args.ray:
            from embedding_api.jobs.ray_runner import run_ray_job

            report = run_ray_job(args.input, args.output, settings, options, errors=errors, actors=args.actors)
        else:
            report = run_job(args.input, args.output, settings, options, errors=errors)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: the rows so far are in {args.output}.parts/; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    rate = report.embedded / report.embed_seconds if report.embed_seconds else 0.0
    print(
        f"{report.embedded} rows embedded into {args.output} ({report.skipped} already there, {rate:.1f} rows/s), "
        f"{report.errors} errors in {errors}",
        file=sys.stderr,
    )
    return 0
