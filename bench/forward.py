"""What each CPU kernel choice buys, in-process: the adapters' own prepare / collate / run, with one choice taken
back at a time, each variant in a fresh process, the variants alternated over rounds (the machine is noisy).

    python -m bench.forward [--rounds 2] [--variants all no-heap ...] [--no-write]

Workloads (float32, 2 threads; the vs_vllm checkpoint, and the small reranker one for rerank):
- mixed: 64 texts of 5-400 words, packed batches of <= 2,048 real tokens in arrival order (items/s);
- single: 60 short texts one at a time, collate + forward (p50 ms);
- images: 16 random 512x512 images in batches of 8 (items/s);
- rerank: 1 query x 64 documents, batches cut as the engine cuts them, shared prefixes counted once (pairs/s).
Writes the `forward` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
from PIL import Image

from bench.common import CACHE, machine, stamp, write_section

VARIANTS = {
    "all": "every choice on (the server as shipped)",
    "no-kernels": "PyTorch's own ops: packed attention through SDPA sequence by sequence, unfused norms and rotary",
    "no-heap": "glibc's default heap (fresh mappings for big blocks)",
    "no-pooled-attention": "the last layer's queries and attention for every token",
    "no-patch-linear": "vision patches through oneDNN's 3-D convolution",
    "no-shared-budget": "rerank batches budgeted by full pair lengths",
}
THREADS = 2
BUDGET = 2048  # the CPU's automatic MAX_BATCH_TOKENS


def _cut(prepared: list[Any], shared_counts: bool) -> list[list[Any]]:
    """Batches in arrival order within the token budget, a repeated shared prefix counted once when asked."""
    batches: list[list[Any]] = []
    current: list[Any] = []
    tokens = 0
    seen: set[str | None] = set()
    for item in prepared:
        cost = item.tokens
        if shared_counts and item.shared_prefix is not None and item.shared_prefix in seen:
            cost -= item.shared_tokens
        if current and tokens + cost > BUDGET:
            batches.append(current)
            current, tokens, seen = [], 0, set()
            cost = item.tokens
        current.append(item)
        tokens += cost
        seen.add(item.shared_prefix)
    return [*batches, current] if current else batches


def _load(path: str, variant: str) -> Any:
    from embedding_api.families import cpu_linear
    from embedding_api.families.loader import load_family
    from embedding_api.settings import Settings

    kernels = "pytorch" if variant == "no-kernels" else "compiled"
    settings = Settings(model_path=path, device="cpu", dtype="float32", cpu_kernels=kernels, _env_file=None)
    family: Any = load_family(settings)
    model = family.model
    if variant == "no-pooled-attention":
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child).__name__ == "PooledRowsAttention":
                    setattr(module, name, child.attention)
    if variant == "no-patch-linear":
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, cpu_linear.PatchLinear):
                    setattr(module, name, child.conv)
    return family


def _timed(run: Any, batches: list[Any]) -> float:
    run(batches[0])  # warm-up: oneDNN kernels for the first shapes
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return time.perf_counter() - started


def measure(variant: str) -> dict[str, float]:
    import torch

    from bench.rerank import CHECKPOINT as RERANKER
    from bench.rerank import documents
    from bench.vs_vllm import SHORT_WORDS, WORDS, bench_checkpoint
    from devtools.tiny_families import build_vl_reranker
    from embedding_api.engine.memory import keep_freed_memory_for_reuse
    from embedding_api.items import Item

    if variant != "no-heap":
        keep_freed_memory_for_reuse()
    torch.set_num_threads(THREADS)
    family = _load(str(bench_checkpoint()), variant)
    rng = random.Random("bench.forward")
    result: dict[str, float] = {}

    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400))) for _ in range(64)]
    batches = [family.collate(b) for b in _cut([family.prepare(Item(texts=[t])) for t in texts], True)]
    result["mixed"] = len(texts) / _timed(family.run, batches)

    latencies = []
    for _ in range(70):
        text = " ".join(rng.choice(WORDS) for _ in range(SHORT_WORDS))
        started = time.perf_counter()
        family.run(family.collate([family.prepare(Item(texts=[text]))]))
        latencies.append((time.perf_counter() - started) * 1000)
    result["single"] = statistics.median(latencies[10:])

    pixels = np.random.default_rng(7).integers(0, 256, (16, 512, 512, 3), dtype=np.uint8)
    images = [family.prepare(Item(images=[Image.fromarray(frame)])) for frame in pixels]
    batches = [family.collate(images[i : i + 8]) for i in range(0, 16, 8)]
    result["images"] = 16 / _timed(family.run, batches)
    del family

    if not (RERANKER / "config.json").exists():
        build_vl_reranker(RERANKER, small=True)
    reranker = _load(str(RERANKER), variant)
    query = "which garden letter mentions the river in the morning"
    pairs = [reranker.prepare(Item(texts=[query], document=Item(texts=[d]))) for d in documents(0)]
    batches = [reranker.collate(b) for b in _cut(pairs, variant != "no-shared-budget")]
    result["rerank"] = len(pairs) / _timed(reranker.run, batches)
    return result


def _child(variant: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.forward", "--variant", variant],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one measurement, in this process
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant)))
        return
    began = time.monotonic()
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in args.variants}
    for round_index in range(args.rounds):
        for variant in args.variants:
            runs[variant].append(_child(variant))
            print(f"round {round_index + 1} {variant}: {runs[variant][-1]}", flush=True)

    def cell(variant: str, key: str) -> str:
        values = [run[key] for run in runs[variant]]
        return " / ".join(f"{value:.1f}" for value in values)

    def ratio(variant: str, key: str) -> str:
        if variant == "all" or "all" not in runs:
            return "-"
        mine = statistics.median(run[key] for run in runs[variant])
        best = statistics.median(run[key] for run in runs["all"])
        # above 1: the choice taken back here is worth that much (latency: lower is better)
        return f"{(mine / best if key == 'single' else best / mine):.2f}"

    lines = [
        "## What each CPU kernel choice buys, in-process",
        "",
        f"Command: `python -m bench.forward --rounds {args.rounds}` (`make bench-forward`).  ",
        f"Machine: {machine()}. Date: {stamp()}. Full run: {(time.monotonic() - began) / 60:.1f} min.  ",
        f"Checkpoints: `{CACHE.name}/checkpoint-vllm` (512 hidden, 8 layers), the small VL reranker for rerank; "
        f"float32, {THREADS} threads; each variant in a fresh process, variants alternated, one figure per round.",
        "",
        "| variant | mixed texts items/s | one short text p50 ms | 512x512 images items/s | rerank pairs/s | "
        "all on / variant (mixed, single, images, rerank) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in args.variants:
        gains = ", ".join(ratio(variant, key) for key in ("mixed", "single", "images", "rerank"))
        lines.append(
            f"| {variant}: {VARIANTS[variant]} | {cell(variant, 'mixed')} | {cell(variant, 'single')} | "
            f"{cell(variant, 'images')} | {cell(variant, 'rerank')} | {gains} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("forward", text)


if __name__ == "__main__":
    main()
