"""Throughput benchmark: the in-process ceiling, our server, and the naive one-forward-per-request server, in one run.

    python -m bench.throughput [--checkpoints tiny small] [--seconds 3] [--clients 1 8 32 64] [--ceiling-only]

Writes a section of docs/benchmarks.md. Ratios are taken within the run (the machine is noisy).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from typing import Any

import numpy as np

from bench.common import (
    ServerProcess,
    checkpoint,
    image_512_base64,
    machine,
    request_bodies,
    run_load,
    sentence,
    stamp,
    write_section,
)
from embedding_api.engine.memory import keep_freed_memory_for_reuse
from embedding_api.families.loader import load_family
from embedding_api.http.encoding import embeddings_response
from embedding_api.items import Item
from embedding_api.media.decode import MediaLimits, decode_image, decode_inline
from embedding_api.settings import Settings

SCENARIOS = ("text", "text32", "image", "mix")


def _items_per_second(family: Any, make_items: Any, batch_size: int, seconds: float) -> float:
    """The adapter alone, sequentially: prepare, collate, run, finish, for batches of `batch_size`."""
    done = 0
    k = 0
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < stop_at or done == 0:
        items = make_items(k, batch_size)
        prepared = [family.prepare(item) for item in items]
        family.finish(family.run(family.collate(prepared)), None, True)
        done += batch_size
        k += batch_size
    return done / (time.perf_counter() - started)


def _text_items(k: int, n: int) -> list[Item]:
    return [Item(texts=[sentence(k + j)]) for j in range(n)]


_IMAGES = [image_512_base64(i) for i in range(4)]


def _image_items(k: int, n: int) -> list[Item]:
    # Decoding the base64 JPEG is part of the work the server does, so the ceiling does it too.
    limits = MediaLimits()
    return [
        Item(images=[decode_image(decode_inline(_IMAGES[(k + j) % 4], "input", expect="image"), "input", limits)])
        for j in range(n)
    ]


def ceiling(model_dir: Any, seconds: float) -> dict[str, Any]:
    keep_freed_memory_for_reuse()  # the heap as the server sets it, so the ratios compare the serving alone
    family = load_family(Settings(model_path=str(model_dir), _env_file=None))
    _items_per_second(family, _text_items, 4, 0.5)  # warm-up
    text = {b: _items_per_second(family, _text_items, b, seconds) for b in (1, 8, 32, 64)}
    image = {b: _items_per_second(family, _image_items, b, seconds) for b in (1, 4, 8, 16)}
    single_ms = []
    for k in range(30):
        t0 = time.perf_counter()
        items = _text_items(k, 1)
        family.finish(family.run(family.collate([family.prepare(items[0])])), None, True)
        single_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "text": text,
        "image": image,
        "text_best": max(text.values()),
        "image_best": max(image.values()),
        "single_ms": statistics.median(single_ms),
    }


def response_build_ms() -> dict[str, float]:
    vectors = np.random.default_rng(0).standard_normal((256, 2048)).astype(np.float32)
    timings: dict[str, float] = {}
    for fmt in ("base64", "float"):
        runs = []
        for _ in range(20):
            t0 = time.perf_counter()
            embeddings_response(vectors, encoding_format=fmt, model="m", prompt_tokens=1)
            runs.append((time.perf_counter() - t0) * 1000)
        timings[fmt] = statistics.median(runs)
    payload = embeddings_response(vectors, encoding_format="base64", model="m", prompt_tokens=1)
    assert base64.b64decode(__import__("orjson").loads(payload)["data"][0]["embedding"])  # it really is base64
    return timings


def serve_and_load(module: list[str], model_dir: Any, clients: list[int], seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with ServerProcess(module, model_dir) as server:
        for scenario in SCENARIOS:
            bodies, per_request = request_bodies(scenario)
            for n in clients:
                results[f"{scenario}/{n}"] = run_load(server.url, bodies, per_request, n, seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", nargs="+", default=["tiny", "small"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--ceiling-only", action="store_true")
    args = parser.parse_args()

    lines = [
        "## Throughput (issue: one dynamic batcher across requests)",
        "",
        f"Command: `python -m bench.throughput --checkpoints {' '.join(args.checkpoints)} --seconds {args.seconds:g}"
        f"{' --ceiling-only' if args.ceiling_only else ''}` (`make bench`).  ",
        f"Machine: {machine()}. Date: {stamp()}. Device: CPU, float32.",
        "",
    ]
    build = response_build_ms()
    lines += [
        f"Response building, 256 vectors x 2048 dimensions: base64 {build['base64']:.2f} ms, "
        f"float JSON {build['float']:.2f} ms (target: base64 <= 5 ms).",
        "",
    ]
    measured: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
    for name in args.checkpoints:
        model_dir = checkpoint(name)
        top = ceiling(model_dir, args.seconds)
        lines += [
            f"### `{name}` checkpoint",
            "",
            "In-process ceiling (adapter alone, sequential prepare + collate + run + finish), items/s by batch size: "
            + "text "
            + ", ".join(f"{b}: {v:.1f}" for b, v in top["text"].items())
            + "; 512x512 base64 JPEG images "
            + ", ".join(f"{b}: {v:.1f}" for b, v in top["image"].items())
            + f". One text item alone: {top['single_ms']:.2f} ms.",
            "",
        ]
        if args.ceiling_only:
            continue
        ours = serve_and_load(["-m", "embedding_api"], model_dir, args.clients, args.seconds)
        naive = serve_and_load(["-m", "bench.naive_server"], model_dir, args.clients, args.seconds)
        lines += [
            "| scenario | clients | ours items/s | ours p50 ms | ours p99 ms | naive items/s | naive p50 ms "
            "| naive p99 ms | ours / naive | ours / ceiling | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, result in ours.items():
            scenario, n = key.split("/")
            base = naive[key]
            best = top["image_best"] if scenario == "image" else top["text_best"]
            ratio_ceiling = f"{result.items_per_s / best:.2f}" if scenario in ("text", "text32", "image") else "-"
            lines.append(
                f"| {scenario} | {n} | {result.items_per_s:.1f} | {result.percentile(50):.1f} | "
                f"{result.percentile(99):.1f} | {base.items_per_s:.1f} | {base.percentile(50):.1f} | "
                f"{base.percentile(99):.1f} | {result.items_per_s / base.items_per_s:.2f} | {ratio_ceiling} | "
                f"{result.errors + base.errors} |"
            )
        measured[name] = (top, ours, naive)
        one = ours["text/1"]
        lines += [
            "",
            f"Single client, single text: p50 {one.percentile(50):.2f} ms vs {top['single_ms']:.2f} ms in-process "
            f"(+{one.percentile(50) - top['single_ms']:.2f} ms of server overhead).",
            "",
        ]
    write_section("throughput", "\n".join(lines))
    print("\n".join(lines))
    if {"tiny", "small"} <= measured.keys():
        targets = targets_table(measured, build)
        write_section("targets", targets)
        print(targets)


def targets_table(
    measured: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]], build: dict[str, float]
) -> str:
    """The throughput issue's targets, filled in from this run's own figures."""
    small_top, small_ours, small_naive = measured["small"]
    tiny_top, tiny_ours, _ = measured["tiny"]
    text32 = small_ours["text/32"].items_per_s
    image_ratio = {
        name: measured[name][1]["image/32"].items_per_s / measured[name][0]["image_best"] for name in ("small", "tiny")
    }
    p50 = tiny_ours["text/1"].percentile(50)
    rows = [
        (
            "small checkpoint, 32 clients, single-text requests: >= 0.85 x ceiling",
            f"{text32 / small_top['text_best']:.2f} ({text32:.1f} vs {small_top['text_best']:.1f} items/s); "
            f"{text32 / small_naive['text/32'].items_per_s:.2f} x naive",
        ),
        (
            "512x512 base64 images, 32 clients: >= 0.8 x image ceiling",
            f"small {image_ratio['small']:.2f}, tiny {image_ratio['tiny']:.2f}",
        ),
        (
            "tiny checkpoint, 1 client: p50 <= 3 ms above in-process single item",
            f"{p50 - tiny_top['single_ms']:+.2f} ms ({p50:.2f} vs {tiny_top['single_ms']:.2f} ms)",
        ),
        (
            "256 vectors x 2048 dimensions, base64 response built in <= 5 ms",
            f"{build['base64']:.2f} ms (float JSON: {build['float']:.1f} ms)",
        ),
        ("GPU: >= 4 x naive with the real 2B shape", "not measured here: `make bench` runs on the CPU"),
    ]
    return "\n".join(
        ["## Targets (throughput issue), from the run below", "", "| target | result |", "|---|---|"]
        + [f"| {target} | {result} |" for target, result in rows]
    )


if __name__ == "__main__":
    main()
