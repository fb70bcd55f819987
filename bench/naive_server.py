"""The baseline: the same adapter behind a server that runs one forward pass per request, in arrival order.

This is the single-request design (no batching across requests, CPU work not overlapped with the device).
Run: `python -m bench.naive_server` with MODEL_PATH, HOST and PORT in the environment.
"""

from __future__ import annotations

import asyncio

import httpx
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from embedding_api.engine.memory import keep_freed_memory_for_reuse
from embedding_api.families.loader import load_family
from embedding_api.http.body import parse_body
from embedding_api.http.encoding import embeddings_response
from embedding_api.http.wire import EmbeddingRequest
from embedding_api.media.decode import MediaLimits
from embedding_api.media.fetch import FetchLimits, MediaFetcher
from embedding_api.media.parse import parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.settings import Settings


def create_naive_app(settings: Settings) -> FastAPI:
    keep_freed_memory_for_reuse()  # the heap as our server sets it: the comparison is about batching alone
    family = load_family(settings)
    lock = asyncio.Lock()
    app = FastAPI()
    client = httpx.AsyncClient()
    resolver = MediaResolver(MediaFetcher(client, FetchLimits()), MediaLimits())

    def forward(request: EmbeddingRequest, items: list) -> bytes:  # type: ignore[type-arg]
        prepared = [family.prepare(item) for item in items]
        batch = family.collate(prepared)
        vectors = family.finish(family.run(batch), request.dimensions, request.normalize)
        return embeddings_response(
            vectors,
            encoding_format=request.encoding_format,
            model=settings.model_name,
            prompt_tokens=sum(batch.token_counts),
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    async def embed(request: Request) -> Response:
        body = parse_body(await request.body(), EmbeddingRequest)
        items = await resolver.resolve(parse_input(body.input, max_items=settings.max_inputs_per_request))
        async with lock:  # one request at a time, in arrival order
            payload = await asyncio.to_thread(forward, body, items)
        return Response(payload, media_type="application/json")

    return app


if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(create_naive_app(settings), host=settings.host, port=settings.port, log_level="warning")
