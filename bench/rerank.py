"""Rerank throughput: 1 query x 64 text documents per request, this server against the official one-pair-per-pass
loop in-process, on the same random Qwen3-VL-Reranker-shaped checkpoint (the `small` shape: 512 hidden, 8 layers).

The official loop is written here as `Qwen3VLReranker.process` runs (one chat per pair through the processor, the
language model's last hidden state at the last position, times the `yes - no` row of the LM head, sigmoid),
float32, 2 threads.
Run: `python -m bench.rerank [--rounds 3]` (`make bench-rerank`); writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import numpy as np
import torch

from bench.common import CACHE, ServerProcess, machine, seeded_texts, stamp, write_section
from devtools.tiny_families import build_vl_reranker

CHECKPOINT = CACHE / "checkpoint-small-reranker"
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
THREADS = 2


def documents(seed: int, count: int = 64) -> list[str]:
    return seeded_texts(seed, count, 10, 60)


def official_loop(query: str, docs: list[str]) -> tuple[list[float], float]:
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    torch.set_num_threads(THREADS)
    processor = AutoProcessor.from_pretrained(CHECKPOINT, padding_side="left")
    released = Qwen3VLForConditionalGeneration.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    model = released.model  # as the official class: the LM head is reduced to its yes - no row
    yes, no = (processor.tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
    head = released.lm_head.weight.data
    score_row = head[yes] - head[no]

    def score(document: str) -> float:
        content = [
            {"type": "text", "text": f"<Instruct>: {INSTRUCTION}"},
            {"type": "text", "text": "<Query>:"},
            {"type": "text", "text": query},
            {"type": "text", "text": "\n<Document>:"},
            {"type": "text", "text": document},
        ]
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {"role": "user", "content": content},
        ]
        text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, padding=True, return_tensors="pt")
        with torch.no_grad():
            last = model(**inputs).last_hidden_state[0, -1]
        return float(torch.sigmoid(last @ score_row))

    score(docs[0])  # warm-up
    started = time.perf_counter()
    scores = [score(document) for document in docs]
    return scores, time.perf_counter() - started


def server_rate(query: str, batches: list[list[str]]) -> tuple[list[list[float]], float]:
    env = {"DEVICE": "cpu", "DTYPE": "float32", "OMP_NUM_THREADS": str(THREADS), "MODELS": f"rr={CHECKPOINT}"}
    with ServerProcess(["-m", "embedding_api"], CHECKPOINT, env) as server:
        httpx.post(f"{server.url}/v1/rerank", json={"query": query, "documents": batches[0][:8]}, timeout=600)
        started = time.perf_counter()
        all_scores = []
        for docs in batches:
            answer = httpx.post(f"{server.url}/v1/rerank", json={"query": query, "documents": docs}, timeout=600)
            answer.raise_for_status()
            by_index = {row["index"]: row["relevance_score"] for row in answer.json()["results"]}
            all_scores.append([by_index[i] for i in range(len(docs))])
        return all_scores, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="server and official loop alternated this many times")
    args = parser.parse_args()
    if not (CHECKPOINT / "config.json").exists():
        build_vl_reranker(CHECKPOINT, small=True)
    query = "which garden letter mentions the river in the morning"
    batches = [documents(seed) for seed in range(3)]
    ours_rates, official_rates, differences = [], [], []
    for _ in range(args.rounds):  # alternated: the machine's noise falls on both sides alike
        ours, ours_seconds = server_rate(query, batches)
        official, official_seconds = official_loop(query, batches[0])
        ours_rates.append(sum(len(b) for b in batches) / ours_seconds)
        official_rates.append(len(batches[0]) / official_seconds)
        differences.append(float(np.abs(np.array(ours[0]) - np.array(official)).max()))
    ours_rate, official_rate = statistics.median(ours_rates), statistics.median(official_rates)

    def each(rates: list[float]) -> str:
        return " / ".join(f"{rate:.1f}" for rate in rates)

    ratios = " / ".join(f"{o / r:.2f}" for o, r in zip(ours_rates, official_rates, strict=True))
    text = "\n".join(
        [
            "## Rerank throughput (issue 13)",
            "",
            f"Command: `python -m bench.rerank --rounds {args.rounds}` (`make bench-rerank`).  ",
            f"Machine: {machine()}. Date: {stamp()}. Checkpoint: random Qwen3-VL-Reranker shape, 512 hidden, 8 "
            "layers, float32, 2 threads. The server and the official loop alternate, one figure per round.",
            "",
            "| 1 query x 64 text documents | pairs/s, each round | median |",
            "|---|---|---|",
            f"| official loop, one pair per forward pass, in-process | {each(official_rates)} | {official_rate:.1f} |",
            f"| this server, `/v1/rerank`, 3 requests one after the other | {each(ours_rates)} | {ours_rate:.1f} |",
            f"| ratio | {ratios} | {ours_rate / official_rate:.2f} x |",
            "",
            f"Largest score difference, server vs official loop, same 64 pairs: {max(differences):.1e}.",
        ]
    )
    print(text)
    write_section("rerank", text)


if __name__ == "__main__":
    main()
