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
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=30)
    return 1 if app.state.runtime.status == "error" else 0
