"""Shared pieces of the benchmarks: checkpoints, inputs, servers, the load generator and the report file."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import platform
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from devtools.tiny_checkpoint import SMALL_SPEC, TinySpec, build_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"
CHECKPOINTS = {"tiny": TinySpec(), "small": SMALL_SPEC}


def checkpoint(name: str) -> Path:
    path = CACHE / f"checkpoint-{name}"
    if not (path / "config.json").is_file():
        build_tiny_checkpoint(path, CHECKPOINTS[name])
    return path


def sentence(i: int) -> str:
    words = ["search", "engine", "vector", "image", "cat", "report", "quarterly", "river", "mountain", "train"]
    return " ".join(words[(i * 7 + k) % len(words)] for k in range(8 + i % 9))


SEED_WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "cloud",
    "light",
    "paper",
    "music",
    "garden",
    "window",
    "letter",
    "morning",
]


def seeded_texts(seed: int, count: int, low: int, high: int) -> list[str]:
    """`count` texts of `low`..`high` words from a small vocabulary, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(SEED_WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)]


def image_512_base64(seed: int = 0) -> str:
    pixels = (np.random.default_rng(seed).random((512, 512, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_section(name: str, text: str) -> None:
    """Replace the report's section between `<!-- name:start -->` and `<!-- name:end -->` (append if absent)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    current = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    block = f"<!-- {name}:start -->\n{text.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block
    REPORT.write_text(updated.rstrip() + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(url: str, gone: Callable[[], str | None], seconds: float, interval: float) -> bool:
    """Poll `url`/health until it answers 200 (True) or `seconds` pass (False); `gone()` says why the server has
    exited, raised at once, or None while it runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reason = gone()
        if reason is not None:
            raise RuntimeError(reason)
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


class ServerProcess:
    """A server in its own process (so the load generator does not share its interpreter)."""

    def __init__(self, module: list[str], model_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "MODEL_PATH": str(model_dir),
                "PORT": str(self.port),
                "HOST": "127.0.0.1",
                "API_KEY": "",
                "LOG_LEVEL": "warning",
                "DEVICE": env.get("DEVICE", "auto"),
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, *module], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        def gone() -> str | None:
            if self.process.poll() is None:
                return None
            return f"server exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"

        if not wait_for_health(self.url, gone, seconds=600, interval=0.2):
            raise RuntimeError("server did not become ready")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class LoadResult:
    requests: int
    items: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class _Connection:
    """A minimal keep-alive HTTP/1.1 client: pre-encoded requests, Content-Length bodies. It keeps the load
    generator's own CPU use small, since it shares the machine's cores with the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _encode(url: str, body: bytes) -> bytes:
    host = url.split("//", 1)[1]
    return (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _load(url: str, bodies: list[bytes], items_per_request: int, clients: int, seconds: float) -> LoadResult:
    host, port = url.split("//", 1)[1].split(":")
    requests = [_encode(url, body) for body in bodies]
    latencies: list[float] = []
    errors = 0
    done_items = 0
    warm = _Connection(host, int(port))
    await warm.post(requests[0])  # warm the server's path once
    warm.close()
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(offset: int) -> None:
        nonlocal errors, done_items
        connection = _Connection(host, int(port))
        k = offset
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, _ = await connection.post(requests[k % len(requests)])
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    done_items += items_per_request
                else:
                    errors += 1
                k += clients
        finally:
            connection.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), done_items, elapsed, latencies, errors)


def run_load(url: str, bodies: list[bytes], items_per_request: int, clients: int, seconds: float) -> LoadResult:
    return asyncio.run(_load(url, bodies, items_per_request, clients, seconds))


def request_bodies(kind: str, count: int = 64) -> tuple[list[bytes], int]:
    """Request bodies for a scenario, and items per request."""
    if kind == "text":
        return [orjson.dumps({"input": sentence(i)}) for i in range(count)], 1
    if kind == "text32":
        return [orjson.dumps({"input": [sentence(i * 32 + j) for j in range(32)]}) for i in range(count)], 32
    if kind == "image":
        images = [image_512_base64(i) for i in range(4)]
        return [orjson.dumps({"input": [{"type": "image", "data": images[i % 4]}]}) for i in range(count)], 1
    if kind == "mix":
        images = [image_512_base64(i) for i in range(4)]
        bodies = []
        for i in range(count):
            body: dict[str, Any]
            if i % 3 == 0:
                body = {"input": [{"type": "image", "data": images[i % 4]}]}
            elif i % 3 == 1:
                body = {"input": [sentence(i)]}
            else:
                body = {"input": [[sentence(i), {"type": "image", "data": images[i % 4]}]]}
            bodies.append(orjson.dumps(body))
        return bodies, 1
    raise ValueError(kind)
