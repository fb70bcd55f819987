"""Load tests against a real uvicorn server: many mixed requests at concurrency 64, each answer checked.

Every vector must equal the vector of the same input embedded alone (batching must not change results), no
request may be lost, and every 429 must carry Retry-After and succeed when retried after it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedding_api.families.base import EmbeddingFamily
from tests.conftest import API_KEY, LiveServer, b64, image_bytes, make_image, make_settings

pytestmark = pytest.mark.slow

CONCURRENCY = 64
TOLERANCE = 1e-5
REQUEST_TIMEOUT_S = 60.0
HEADERS = {"Authorization": f"Bearer {API_KEY}"}

WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "bird",
    "river",
    "mountain",
    "city",
    "night",
    "quick",
    "slow",
    "bright",
    "dark",
    "small",
    "large",
]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def _image_part(seed: int, rng: random.Random) -> dict[str, Any]:
    image = make_image(rng.choice((32, 48, 64)), rng.choice((32, 48, 64)), seed=seed)
    return {"type": "image", "image": b64(image_bytes(image))}


def _item_pool(seed: int = 0) -> list[Any]:
    """~40 distinct top-level items: plain strings, image parts and fused text+image arrays."""
    rng = random.Random(seed)
    texts = list(dict.fromkeys(_text(rng) for _ in range(30)))[:20]
    images = [_image_part(100 + index, rng) for index in range(10)]
    fused = [[{"type": "text", "text": texts[index]}, images[(index * 3) % len(images)]] for index in range(10)]
    return [*texts, *images, *fused]


@dataclass
class Request:
    body: dict[str, Any]
    items: list[int]  # pool indexes, one per expected output vector


def _requests(pool: list[Any], count: int, seed: int) -> list[Request]:
    """A reproducible mix: single strings, arrays of strings, single images, fused arrays, mixed arrays."""
    rng = random.Random(seed)
    texts = [index for index, item in enumerate(pool) if isinstance(item, str)]
    images = [index for index, item in enumerate(pool) if isinstance(item, dict)]
    fused = [index for index, item in enumerate(pool) if isinstance(item, list)]
    out: list[Request] = []
    for _ in range(count):
        kind = rng.choice(("text", "texts", "image", "fused", "mixed"))
        if kind == "text":
            index = rng.choice(texts)
            out.append(Request({"input": pool[index]}, [index]))
            continue
        if kind == "image":
            index = rng.choice(images)
            out.append(Request({"input": pool[index]}, [index]))
            continue
        if kind == "texts":
            chosen = rng.sample(texts, rng.randint(2, 6))
        elif kind == "fused":
            chosen = rng.sample(fused, rng.randint(1, 2))
        else:
            chosen = [rng.choice(texts), rng.choice(images), rng.choice(fused)]
            rng.shuffle(chosen)
        out.append(Request({"input": [pool[index] for index in chosen]}, chosen))
    return out


def _vectors(payload: dict[str, Any]) -> list[np.ndarray]:
    data = sorted(payload["data"], key=lambda entry: entry["index"])
    return [np.asarray(entry["embedding"], dtype=np.float32) for entry in data]


async def _expected(client: httpx.AsyncClient, pool: list[Any]) -> list[np.ndarray]:
    """Each item embedded alone, one request at a time."""
    expected: list[np.ndarray] = []
    for item in pool:
        body = {"input": [item] if isinstance(item, list) else item}
        response = await asyncio.wait_for(client.post("/v1/embeddings", json=body), REQUEST_TIMEOUT_S)
        assert response.status_code == 200, response.text
        (vector,) = _vectors(response.json())
        expected.append(vector)
    return expected


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    overloaded: int = 0
    lost: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    retry_after_missing: int = 0
    max_diff: float = 0.0


async def _run(
    base_url: str, requests: list[Request], expected: list[np.ndarray] | None, pool: list[Any], *, max_attempts: int
) -> tuple[Tally, list[np.ndarray]]:
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for position in range(len(requests)):
        queue.put_nowait(position)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)

    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=limits, timeout=timeout) as client:
        if expected is None:
            expected = await _expected(client, pool)

        async def one(position: int) -> None:
            request = requests[position]
            for _ in range(max_attempts):
                tally.sent += 1
                try:
                    response = await asyncio.wait_for(
                        client.post("/v1/embeddings", json=request.body), REQUEST_TIMEOUT_S + 5
                    )
                except (httpx.HTTPError, TimeoutError) as exc:
                    tally.lost.append(f"request {position}: {type(exc).__name__}: {exc}")
                    return
                if response.status_code == 429:
                    tally.overloaded += 1
                    retry_after = response.headers.get("retry-after")
                    if retry_after is None:
                        tally.retry_after_missing += 1
                        retry_after = "1"
                    await asyncio.sleep(float(retry_after))
                    continue
                if response.status_code != 200:
                    tally.unexpected.append(f"request {position}: {response.status_code} {response.text[:200]}")
                    return
                vectors = _vectors(response.json())
                assert expected is not None
                if len(vectors) != len(request.items):
                    tally.mismatched.append(f"request {position}: {len(vectors)} vectors for {len(request.items)}")
                    return
                for got, index in zip(vectors, request.items, strict=True):
                    diff = float(np.max(np.abs(got - expected[index])))
                    tally.max_diff = max(tally.max_diff, diff)
                    if diff > TOLERANCE:
                        tally.mismatched.append(f"request {position}, item {index}: max abs diff {diff:.2e}")
                tally.ok += 1
                return
            tally.lost.append(f"request {position}: still 429 after {max_attempts} attempts")

        async def worker() -> None:
            while True:
                try:
                    position = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(position)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert expected is not None
    return tally, expected


def _check(tally: Tally, total: int) -> None:
    assert not tally.lost, tally.lost[:5]
    assert not tally.unexpected, tally.unexpected[:5]
    assert not tally.mismatched, tally.mismatched[:5]
    assert tally.retry_after_missing == 0
    assert tally.ok == total


@pytest.fixture(scope="module")
def pool() -> list[Any]:
    return _item_pool()


def test_mixed_load_matches_lone_embeddings(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily, pool: list[Any]
) -> None:
    requests = _requests(pool, 2000, seed=1)
    started = time.perf_counter()
    with LiveServer(make_settings(tiny_model_dir), tiny_family) as server:
        tally, _ = asyncio.run(asyncio.wait_for(_run(server.url, requests, None, pool, max_attempts=20), timeout=240))
    seconds = time.perf_counter() - started
    print(
        f"load: {len(requests)} requests, {tally.ok} ok, {tally.overloaded} x 429, "
        f"max diff {tally.max_diff:.1e}, {seconds:.1f} s"
    )
    _check(tally, len(requests))


def test_overload_answers_429_with_retry_after(
    tiny_model_dir: Path, tiny_family: EmbeddingFamily, pool: list[Any]
) -> None:
    # Arrays of several items against an 8-item queue: 64 concurrent clients must overflow it.
    requests = [request for request in _requests(pool, 1200, seed=2) if len(request.items) >= 3][:300]
    started = time.perf_counter()
    with LiveServer(make_settings(tiny_model_dir, max_queued_items=8), tiny_family) as server:
        tally, _ = asyncio.run(asyncio.wait_for(_run(server.url, requests, None, pool, max_attempts=60), timeout=240))
    seconds = time.perf_counter() - started
    print(
        f"overload: {len(requests)} requests, {tally.ok} ok, {tally.overloaded} x 429, "
        f"{tally.sent} sent, {seconds:.1f} s"
    )
    assert tally.overloaded > 0, "a queue of 8 items never overflowed"
    _check(tally, len(requests))
