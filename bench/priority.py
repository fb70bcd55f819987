"""Interactive before bulk: 8 clients send single short queries in a loop while one client floods requests of 2,048
texts; the queries' latency (a) with no flood, (b) with the flood marked `"priority": "bulk"`, (c) with the same
flood unmarked (priorities off: everything interactive). One server, the three scenarios one after the other.

    python -m bench.priority [--seconds 30] [--clients 8] [--bulk-size 2048] [--rounds 3]

Writes the `priority` section of docs/benchmarks.md. Ratios are taken within the run (the machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from bench.common import CACHE, ServerProcess, _Connection, _encode, machine, seeded_texts, stamp, write_section
from devtools.tiny_families import build_qwen3_embedding

CHECKPOINT = CACHE / "checkpoint-qwen3-tiny"
WARM_UP_S = 1.0  # the flood runs this long before the queries are timed, so (b) and (c) start in a steady state


def checkpoint() -> Path:
    """A random Qwen3-Embedding shape, 64 hidden, 2 layers: small enough that a 2,048-text request takes seconds."""
    if not (CHECKPOINT / "config.json").is_file():
        build_qwen3_embedding(CHECKPOINT)
    return CHECKPOINT


@dataclass
class Scenario:
    name: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    bulk_seconds: list[float] = field(default_factory=list)  # each bulk request finished while queries were timed
    errors: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _run(url: str, name: str, bulk: bytes | None, bulk_size: int, clients: int, seconds: float) -> Scenario:
    host, port = url.split("//", 1)[1].split(":")
    queries = [_encode(url, orjson.dumps({"input": text})) for text in seeded_texts(7, 256, 3, 8)]
    result = Scenario(name)
    timing = asyncio.Event()

    async def flood() -> None:
        assert bulk is not None
        connection = _Connection(host, int(port))
        try:
            while True:
                t0 = time.perf_counter()
                status, _ = await connection.post(bulk)
                if not timing.is_set():
                    continue
                if status == 200:
                    result.bulk_seconds.append(time.perf_counter() - t0)
                else:
                    result.errors += 1
        finally:
            connection.close()  # a request cut short: the server drops its queued items

    async def query_loop(offset: int) -> None:
        connection = _Connection(host, int(port))
        k = offset
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, _ = await connection.post(queries[k % len(queries)])
                if status == 200:
                    result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    result.errors += 1
                k += clients
        finally:
            connection.close()

    flooding = asyncio.ensure_future(flood()) if bulk is not None else None
    await asyncio.sleep(WARM_UP_S if bulk is not None else 0.0)
    timing.set()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(query_loop(i) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    if flooding is not None:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
    await asyncio.sleep(1.0)  # the server notices the cut request and drops its items before the next scenario
    return result


def run(url: str, bulk_size: int, clients: int, seconds: float, rounds: int) -> list[Scenario]:
    """The three scenarios in turn, `rounds` times (`seconds` each in all): the machine's noise falls on all three."""
    texts = seeded_texts(11, bulk_size, 4, 16)
    floods = {
        "(a) idle: queries alone": None,
        "(b) bulk flood, marked bulk": _encode(url, orjson.dumps({"input": texts, "priority": "bulk"})),
        "(c) bulk flood, unmarked (priorities off)": _encode(url, orjson.dumps({"input": texts})),
    }
    asyncio.run(_run(url, "warm-up", None, bulk_size, clients, 1.0))
    totals = {name: Scenario(name) for name in floods}
    for _ in range(rounds):
        for name, flood in floods.items():
            part = asyncio.run(_run(url, name, flood, bulk_size, clients, seconds / rounds))
            total = totals[name]
            total.seconds += part.seconds
            total.latencies_ms += part.latencies_ms
            total.bulk_seconds += part.bulk_seconds
            total.errors += part.errors
    return list(totals.values())


def report(results: list[Scenario], args: argparse.Namespace) -> str:
    idle, marked, unmarked = results
    lines = [
        "## Interactive before bulk (issue: priorities)",
        "",
        f"Command: `python -m bench.priority --seconds {args.seconds:g} --clients {args.clients} "
        f"--bulk-size {args.bulk_size} --rounds {args.rounds}`.  ",
        f"Machine: {machine()}, shared with other work while measured (noisy). Date: {stamp()}. Device: CPU, float32. "
        "Checkpoint: random Qwen3-Embedding shape, 64 hidden, 2 layers (`devtools/tiny_families.py`). Server "
        "defaults (2,048-token batches on CPU, BULK_MAX_WAIT_MS=2000).",
        "",
        f"{args.clients} clients send one short query (3-8 words) after another; one client sends requests of "
        f"{args.bulk_size} texts (4-16 words) back to back. Latency is the queries' own, client side. The three "
        f"scenarios ran in turn, {args.rounds} times, {args.seconds / args.rounds:g} s each time, so the noise of "
        "the shared machine falls on all three.",
        "",
        "| scenario | queries | query p50 ms | query p99 ms | query max ms | bulk requests done | bulk items/s "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        done = len(result.bulk_seconds)
        rate = f"{done * args.bulk_size / sum(result.bulk_seconds):.0f}" if done else "-"
        lines.append(
            f"| {result.name} | {len(result.latencies_ms)} | {result.percentile(50):.1f} | "
            f"{result.percentile(99):.1f} | {max(result.latencies_ms, default=float('nan')):.1f} | "
            f"{done if result is not idle else '-'} | {rate} | {result.errors} |"
        )
    ratio = marked.percentile(99) / idle.percentile(99)
    lines += [
        "",
        f"Query p99 with the flood marked bulk: {ratio:.2f} x idle (target: within 2 x); unmarked: "
        f"{unmarked.percentile(99) / idle.percentile(99):.2f} x idle.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per scenario, in all")
    parser.add_argument("--clients", type=int, default=8, help="clients sending single queries")
    parser.add_argument("--bulk-size", type=int, default=2048, help="texts per bulk request")
    parser.add_argument("--rounds", type=int, default=3, help="a, b, c in turn this many times")
    args = parser.parse_args()
    with ServerProcess(["-m", "embedding_api"], checkpoint()) as server:
        results = run(server.url, args.bulk_size, args.clients, args.seconds, args.rounds)
    text = report(results, args)
    write_section("priority", text)
    print(text)


if __name__ == "__main__":
    main()
