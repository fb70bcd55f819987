"""The bulk job against the server: items/s of `python -m embedding_api batch` (in-process, the code the command
runs) and of the server fed by 32 concurrent clients sending one text per request, on the same checkpoint and the
same seeded texts, one after the other.

    python -m bench.batch_job [--checkpoints tiny small] [--count 2000 300] [--clients 32] [--repeat 2]

Writes the `batch-job` section of docs/benchmarks.md. The best of `--repeat` runs of each side is kept, and the share
of the machine's CPU that other processes used meanwhile is reported next to each figure (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import ServerProcess, checkpoint, machine, seeded_texts, stamp, write_section
from bench.vs_vllm import CpuMeter, Measured, run_fixed
from embedding_api.jobs.runner import JobOptions, JobReport, run_job
from embedding_api.settings import Settings


@dataclass
class JobRun:
    report: JobReport
    foreign_cpu: float

    @property
    def items_per_s(self) -> float:
        return self.report.embedded / self.report.embed_seconds


def corpus(count: int) -> list[str]:
    """Distinct seeded texts of 8 to 64 words."""
    return [f"{i} {text}" for i, text in enumerate(seeded_texts(11, count, 8, 64))]


def batch_job(model_dir: Path, texts: list[str], folder: Path, run: int) -> JobRun:
    """The batch command's job, in this process, on a fresh OUTPUT."""
    source = folder / "texts.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"id": f"t{i:06d}", "input": t}) + b"\n" for i, t in enumerate(texts)))
    settings = Settings(model_path=str(model_dir), device=os.environ.get("DEVICE", "auto"), api_key="")
    meter = CpuMeter(os.getpid())
    meter.start()
    report = run_job(source, folder / f"vectors-{run}.parquet", settings, JobOptions(progress=False))
    foreign = meter.foreign()
    if report.embedded != len(texts):
        raise RuntimeError(f"the job embedded {report.embedded} of {len(texts)} texts ({report.errors} errors)")
    return JobRun(report, foreign)


def served(model_dir: Path, texts: list[str], clients: int, repeat: int) -> list[Measured]:
    """The server fed one text per request by `clients` concurrent clients, every text once per run."""
    bodies = [orjson.dumps({"input": text}) for text in texts]
    runs = []
    with ServerProcess(["-m", "embedding_api"], model_dir) as server:
        run_fixed(server.url, bodies[:64], 1, clients)  # warm the server's path
        for _ in range(repeat):
            meter = CpuMeter(server.process.pid)
            meter.start()
            measured = run_fixed(server.url, bodies, 1, clients)
            measured.foreign_cpu = meter.foreign()
            if measured.errors:
                raise RuntimeError(f"the server failed {measured.errors} requests: {measured.first_error}")
            runs.append(measured)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", nargs="+", default=["tiny", "small"])
    parser.add_argument("--count", type=int, nargs="+", default=[2000, 300], help="texts, per checkpoint")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    rows = []
    counts = dict(zip(args.checkpoints, args.count + args.count[-1:] * len(args.checkpoints), strict=False))
    for name in args.checkpoints:
        model_dir = checkpoint(name)
        texts = corpus(counts[name])
        with tempfile.TemporaryDirectory() as folder:
            jobs = [batch_job(model_dir, texts, Path(folder), run) for run in range(args.repeat)]
        server_runs = served(model_dir, texts, args.clients, args.repeat)
        job = max(jobs, key=lambda each: each.items_per_s)
        server = max(server_runs, key=lambda each: each.items_per_s)
        rows.append(
            f"| `{name}` | {len(texts)} | {job.items_per_s:.1f} | {job.report.seconds:.1f} | "
            f"{server.items_per_s:.1f} | {server.p50_ms:.1f} | {job.items_per_s / server.items_per_s:.2f} | "
            f"{job.foreign_cpu:.0%} / {server.foreign_cpu:.0%} |"
        )
        print(rows[-1], flush=True)

    command = (
        f"python -m bench.batch_job --checkpoints {' '.join(args.checkpoints)} "
        f"--count {' '.join(str(counts[name]) for name in args.checkpoints)} "
        f"--clients {args.clients} --repeat {args.repeat}"
    )
    lines = [
        "## Bulk jobs: `batch` in-process vs the server",
        "",
        f"Command: `{command}`.  ",
        f"Machine: {machine()}. Date: {stamp()}. Device: {os.environ.get('DEVICE', 'auto')} (CPU here), float32.",
        "",
        "The same seeded texts (8 to 64 words, all distinct) embedded by the `batch` command's job in-process "
        "(JSONL in, Parquet out, batches of MAX_BATCH_SIZE rows, two in flight) and by the server with "
        f"{args.clients} concurrent clients sending one text per request (every text once). Best of "
        f"{args.repeat} runs each. Job items/s count from the model being ready to the Parquet file being "
        "written; the whole run (loading the model included) is the next column. The last column is the share of "
        "the machine's CPU other processes used meanwhile: this machine is shared, so the figures are noisy.",
        "",
        "| checkpoint | texts | batch items/s | batch whole run s | server items/s | server p50 ms | batch / server "
        "| others' CPU (batch / server) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    write_section("batch-job", text)
    print(text)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
