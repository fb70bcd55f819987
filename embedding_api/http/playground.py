"""`GET /`: a single-page playground (plain HTML/JS/CSS, no external resources) that calls /v1/embeddings."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter()

# The page holds no secrets: it asks for the key and sends it to /v1/embeddings itself.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


@cache
def playground_html() -> str:
    """The page, read from the package (works installed or from a source checkout)."""
    return resources.files("embedding_api.http").joinpath("static", "playground.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(playground_html(), headers=_HEADERS)
