"""Where things are, whatever folder a test module sits in."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OLDER_ENV = Path(__file__).resolve().parent / "older_project.env"  # the older embedding_api's .env, verbatim
