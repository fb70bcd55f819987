"""This server against Infinity on the SAME Qwen3-Embedding-shaped checkpoint, one server after the other.

The checkpoint: random weights, 512 hidden, 8 layers (devtools/tiny_families.py, `bench=True`), saved with the
sentence-transformers files the released Qwen3-Embedding models carry, so Infinity (torch engine, its own
sentence-transformers) and this server load the same files. Both float32 on the CPU with 2 threads.

Workloads: 32 concurrent clients each sending one short text per request (512 requests), and 4 clients sending 32
texts per request (32 requests); distinct seeded texts. Reported: items/s, p50/p99 latency, RSS; plus
sentence-transformers' own in-process `encode(batch_size=32)` rate on the same texts as the ceiling.

Infinity needs its own environment (it pins older transformers):
    python3 -m venv ../.venv-infinity && ../.venv-infinity/bin/pip install "infinity-emb[server,torch]"
Run: `python -m bench.vs_infinity [--venv ../.venv-infinity]` (`make bench-infinity`); writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench.common import CACHE, ROOT, ServerProcess, free_port, machine, seeded_texts, stamp, write_section
from bench.vs_vllm import Measured, run_fixed, tree_rss_mb
from devtools.tiny_families import build_qwen3_embedding

CHECKPOINT = CACHE / "checkpoint-qwen3-text"
MODEL = "qwen3-text"
THREADS = "2"


@dataclass
class Side:
    name: str
    startup_s: float
    rss_ready_mb: float
    rss_after_mb: float
    single: list[Measured]
    batch: list[Measured]
    probe: list[list[float]]


def texts(seed: int, count: int) -> list[str]:
    return [f"{i} {text}" for i, text in enumerate(seeded_texts(seed, count, 8, 40))]


def bodies(seed: int, per_request: int, requests: int) -> list[bytes]:
    corpus = texts(seed, per_request * requests)
    return [
        orjson.dumps({"model": MODEL, "input": corpus[i * per_request : (i + 1) * per_request]})
        for i in range(requests)
    ]


def probe(url: str) -> list[list[float]]:
    body = {"model": MODEL, "input": ["hello world", "the quarterly report was late again"]}
    answer = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60).json()
    return [row["embedding"] for row in answer["data"]]


def measure(name: str, url: str, pid: int, startup_s: float, passes: int) -> Side:
    rss_ready = tree_rss_mb(pid)
    probed = probe(url)
    run_fixed(url, bodies(999, 1, 64), 1, 32)  # warm-up
    single, batch = [], []
    for p in range(passes):
        single.append(run_fixed(url, bodies(100 + p, 1, 512), 1, 32))
        batch.append(run_fixed(url, bodies(200 + p, 32, 32), 32, 4))
        print(
            f"  {name} pass {p + 1}: 32x1 {single[-1].items_per_s:.1f} items/s (p50 {single[-1].p50_ms:.0f} ms, "
            f"p99 {single[-1].p99_ms:.0f} ms, errors {single[-1].errors} {single[-1].first_error}); "
            f"4x32 {batch[-1].items_per_s:.1f} items/s (errors {batch[-1].errors})",
            flush=True,
        )
    return Side(name, startup_s, rss_ready, tree_rss_mb(pid), single, batch, probed)


def run_ours(passes: int) -> Side:
    env = {"DEVICE": "cpu", "DTYPE": "float32", "OMP_NUM_THREADS": THREADS, "MODEL_NAME": MODEL}
    started = time.perf_counter()
    with ServerProcess(["-m", "embedding_api"], CHECKPOINT, env) as server:
        return measure("ours", server.url, server.process.pid, time.perf_counter() - started, passes)


def run_infinity(venv: Path, passes: int) -> Side:
    port = free_port()
    command = [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        str(CHECKPOINT),
        "--served-model-name",
        MODEL,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batch-size",
        "32",
        "--url-prefix",
        "/v1",
        "--no-bettertransformer",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    log = open(CACHE / "infinity-serve.log", "wb")  # noqa: SIM115  # closed below, after the process
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"Infinity exited; see {CACHE / 'infinity-serve.log'}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return measure("Infinity", url, process.pid, time.perf_counter() - started, passes)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def ceiling() -> float:
    """sentence-transformers in-process, `encode(batch_size=32)`, on the 32x1 workload's texts."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(int(THREADS))
    model = SentenceTransformer(str(CHECKPOINT), device="cpu")
    model.encode(texts(999, 64), batch_size=32)
    corpus = texts(100, 512)
    started = time.perf_counter()
    model.encode(corpus, batch_size=32)
    return len(corpus) / (time.perf_counter() - started)


def infinity_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import infinity_emb; print(infinity_emb.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def report(ours: Side, infinity: Side, ceiling_rate: float, version: str, seconds: float) -> str:
    def pair(values: list[float], fmt: str = "{:.1f}") -> str:
        return " / ".join(fmt.format(v) for v in values)

    def rates(side: Side, key: str) -> list[float]:
        return [m.items_per_s for m in getattr(side, key)]

    rows = []
    for key, label in (
        ("single", "32 clients x 1 short text, 512 requests"),
        ("batch", "4 clients x 32 texts, 32 requests"),
    ):
        mine, theirs = rates(ours, key), rates(infinity, key)
        ratio = [a / b for a, b in zip(mine, theirs, strict=True)]
        p50 = [m.p50_ms for m in getattr(ours, key)], [m.p50_ms for m in getattr(infinity, key)]
        p99 = [m.p99_ms for m in getattr(ours, key)], [m.p99_ms for m in getattr(infinity, key)]
        rows.append(
            f"| {label} | {pair(mine)} (p50 {pair(p50[0], '{:.0f}')} ms, p99 {pair(p99[0], '{:.0f}')} ms) | "
            f"{pair(theirs)} (p50 {pair(p50[1], '{:.0f}')} ms, p99 {pair(p99[1], '{:.0f}')} ms) | {pair(ratio, '{:.2f}')} |"
        )
    cosines = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(ours.probe, infinity.probe, strict=True)
    ]
    return "\n".join(
        [
            "## Side by side with Infinity on a Qwen3-Embedding checkpoint (issue 12)",
            "",
            "Command: `python -m bench.vs_infinity` (`make bench-infinity`).  ",
            f"Machine: {machine()}. Date: {stamp()}. Full run: {seconds / 60:.1f} min.  ",
            "Checkpoint: random Qwen3-Embedding shape, 512 hidden, 8 layers, 8/4 heads of 64, sentence-transformers "
            "files as released (`bench/results/checkpoint-qwen3-text`, built by `devtools/tiny_families.py`).  ",
            f"Ours: `python -m embedding_api`, DEVICE=cpu DTYPE=float32 OMP_NUM_THREADS={THREADS}. "
            f"Infinity {version}: `infinity_emb v2 --engine torch --device cpu --dtype float32 --batch-size 32`, "
            f"OMP_NUM_THREADS={THREADS}. One server at a time, warmed up, two passes.",
            "",
            "| workload | ours items/s (pass 1 / 2) | Infinity items/s (pass 1 / 2) | ours / Infinity |",
            "|---|---|---|---|",
            *rows,
            f"| start-up to ready; RSS ready / after | {ours.startup_s:.1f} s; {ours.rss_ready_mb:.0f} / "
            f"{ours.rss_after_mb:.0f} MB | {infinity.startup_s:.1f} s; {infinity.rss_ready_mb:.0f} / "
            f"{infinity.rss_after_mb:.0f} MB | - |",
            "",
            f"sentence-transformers in-process ceiling (`encode(batch_size=32)`, same texts): {ceiling_rate:.1f} items/s "
            f"(ours at 32 x 1: {ours.single[-1].items_per_s / ceiling_rate:.2f} x it; Infinity "
            f"{infinity.single[-1].items_per_s / ceiling_rate:.2f} x).  ",
            "Same vectors: cosine ours vs Infinity on two probe texts: " + ", ".join(f"{c:.6f}" for c in cosines) + ".",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT.parent / ".venv-infinity")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    if not (args.venv / "bin" / "infinity_emb").exists():
        sys.exit(f"Infinity is not installed in {args.venv}; see this module's docstring")
    started = time.monotonic()
    if not (CHECKPOINT / "modules.json").exists():
        build_qwen3_embedding(CHECKPOINT, bench=True)
    print("our server ...", flush=True)
    ours = run_ours(args.passes)
    print("Infinity ...", flush=True)
    infinity = run_infinity(args.venv, args.passes)
    print("sentence-transformers in-process ...", flush=True)
    rate = ceiling()
    text = report(ours, infinity, rate, infinity_version(args.venv), time.monotonic() - started)
    print(text)
    write_section("vs-infinity", text)


if __name__ == "__main__":
    main()
