"""`python -m embedding_api [serve|download]`: serve MODEL_PATH with uvicorn (the default), or fetch the weights."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap

from pydantic import ValidationError

from embedding_api import environment
from embedding_api.settings import Settings, settings_errors

log = logging.getLogger("embedding_api.cli")


def exit_on_fatal(message: str) -> None:
    """Stop the server when the model cannot load (uvicorn shuts down cleanly on SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


def startup_problems(settings: Settings) -> list[str]:
    """What stops this machine from serving these settings (DEVICE, MODEL_PATH or the model list), every one at
    once, before listening."""
    from embedding_api.catalog import CatalogError, model_specs
    from embedding_api.families.device import resolve_device  # imports torch: after the process variables are in place
    from embedding_api.families.loader import ModelUnavailable, local_model_folder, resolve_model_path

    problems = []
    try:
        specs = model_specs(settings)
    except CatalogError as exc:
        return [str(exc)]
    for device in dict.fromkeys(spec.device or settings.device for spec in specs):
        try:
            resolve_device(device)
        except RuntimeError as exc:
            problems.append(str(exc))
    for spec in specs:
        try:
            if problems:  # no download of many gigabytes for a server that cannot start anyway
                local_model_folder(spec.path)
            else:
                resolve_model_path(spec.path)
        except ModelUnavailable as exc:
            problems.append(str(exc) if len(specs) == 1 else f"model {spec.name!r}: {exc}")
    return problems


def serve(argv: list[str] | None = None) -> int:
    from embedding_api.observability.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    for warning in environment.unknown_key_warnings():
        log.warning(warning)
    problems = startup_problems(settings)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    from embedding_api.http.app import create_app
    from embedding_api.http.server import build_server

    app = create_app(settings, on_fatal=exit_on_fatal)
    runtime = app.state.runtime
    server = build_server(app, settings)  # raises the open-file limit, guards headers and connections
    # uvicorn re-raises the stop signal after draining; with these no-op handlers a clean drain exits 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    server.run()
    code = 1 if runtime.status == "error" else 0
    server.exit(code)  # by SHUTDOWN_TIMEOUT, whatever threads still run
    return code


def _env_default(value: object) -> str:
    """A default as it would be written in `.env`."""
    if value is None or value == "":
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_help() -> str:
    """Every setting (env name, default, description), read from `Settings.model_fields`."""
    lines = ["settings (environment variables, or lines in .env; every one has a default):"]
    for name, field in Settings.model_fields.items():
        default = _env_default(field.get_default(call_default_factory=True))
        lines.append(f"  {name.upper()}  (default: {default})")
        lines.extend(
            textwrap.wrap(field.description or "", width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedding_api",
        description="OpenAI-compatible embeddings server for Qwen3-VL-Embedding. Without a command it serves.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{serve,serve-ray,download,batch}")
    commands.add_parser(
        "serve", help="serve MODEL_PATH on HOST:PORT (the default)", description="Serve MODEL_PATH on HOST:PORT."
    )
    commands.add_parser(
        "download",
        help="download MODEL_PATH's hub id into models/<name> and print the MODEL_PATH line for .env",
        description=(
            "Download MODEL_PATH's hub id (default Qwen/Qwen3-VL-Embedding-2B) into models/<name>, then print the "
            "MODEL_PATH=models/<name> line to put in .env. Nothing is downloaded when MODEL_PATH is a local folder."
        ),
    )
    from embedding_api.jobs.command import add_batch_command  # light: the job's runners load when it runs

    add_batch_command(commands)
    from embedding_api.scale.command import add_serve_ray_command  # light: Ray loads when the command runs

    add_serve_ray_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m embedding_api`."""
    args = build_parser().parse_args(argv)
    environment.apply_process_variables()  # before torch and huggingface_hub are imported
    try:
        if args.command == "batch":
            from embedding_api.jobs.command import batch

            return batch(args, preflight=startup_problems)
        if args.command == "serve-ray":
            from embedding_api.scale.command import serve_ray

            return serve_ray(args)
        if args.command == "download":
            from embedding_api.families.download import download

            for warning in environment.unknown_key_warnings():
                print(f"warning: {warning}", file=sys.stderr)
            return download()
        return serve([])
    except ValidationError as exc:
        if args.command != "download":  # serve logs them once the settings are read
            for warning in environment.unknown_key_warnings():
                print(f"warning: {warning}", file=sys.stderr)
        for line in settings_errors(exc):
            print(f"error: invalid setting {line}", file=sys.stderr)
        return 1
