"""`python -m embedding_api`: check the model can be had, then serve with uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import sys

from embedding_api.loader import ModelUnavailable, resolve_model_path
from embedding_api.settings import Settings


def exit_on_fatal(message: str) -> None:
    """Stop the server when the model cannot load (uvicorn shuts down cleanly on SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)


def serve(argv: list[str] | None = None) -> int:
    import uvicorn

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
    # uvicorn re-raises the stop signal after draining; with these no-op handlers a clean drain exits 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    DrainingServer(config).run()
    return 1 if runtime.status == "error" else 0
