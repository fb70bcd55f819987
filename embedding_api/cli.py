"""`python -m embedding_api [serve|download]`: serve MODEL_PATH with uvicorn (the default), or fetch the weights."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap

from pydantic import ValidationError

from embedding_api.settings import Settings


def exit_on_fatal(message: str) -> None:
    """Stop the server when the model cannot load (uvicorn shuts down cleanly on SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


def serve(argv: list[str] | None = None) -> int:
    import uvicorn

    from embedding_api.loader import ModelUnavailable, resolve_model_path  # imports torch: not needed for --help
    from embedding_api.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        resolve_model_path(settings.model_path)
    except ModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from embedding_api.app import create_app

    app = create_app(settings, on_fatal=exit_on_fatal)
    runtime = app.state.runtime

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: mark the runtime draining (503s, health 503), then uvicorn's graceful shutdown."""

        def handle_exit(self, sig: int, frame: object) -> None:
            runtime.draining = True
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the handlers configure_logging installed (text or JSON)
        access_log=False,  # the app logs one line per request itself (with its request id)
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
    # uvicorn re-raises the stop signal after draining; with these no-op handlers a clean drain exits 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    DrainingServer(config).run()
    return 1 if runtime.status == "error" else 0


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
    commands = parser.add_subparsers(dest="command", metavar="{serve,download}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m embedding_api`."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            from embedding_api.download import download

            return download()
        return serve([])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 1
