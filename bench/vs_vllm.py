"""Side by side with vLLM's CPU build: the same checkpoint, the same tokens, one server at a time.

    python -m bench.vs_vllm [--passes 2] [--workloads short batch mixed image single]
                            [--ours-only | --vllm-only] [--ours-env KEY=VALUE ...] [--quick] [--no-write]

Both servers serve one benchmark checkpoint (random weights, 512 hidden, 8 layers, float32, head_dim 64 and
M-RoPE sections vLLM's CPU build accepts) with 2 threads, are warmed up, and get the same fixed-count workloads
(distinct texts and images everywhere, since vLLM caches prefixes; each pass its own). vLLM embeds a plain
`input` string without the chat template, so it is sent the exact prompt string our adapter renders (system
instruction + user + generation prompt), and images as chat `messages` with `add_generation_prompt`; every
response's `usage.prompt_tokens` is compared between the two servers.

vLLM runs from its own environment (../shared/tools/vllm-cpu/install.sh; `--vllm-venv`). A run that measures it
caches its figures in bench/results/vllm-cpu.json; `--ours-only` measures only our server and compares against
that cache (the output says so), so engine changes are measured without vLLM's 2-minute start-up.
Writes the `vs-vllm` section of docs/benchmarks.md when there is something to compare (not with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import io
import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from bench.common import (
    CACHE,
    ROOT,
    ServerProcess,
    _Connection,
    _encode,
    free_port,
    machine,
    stamp,
    wait_for_health,
    write_section,
)
from devtools.tiny_checkpoint import _CORPUS, SMALL_SPEC, build_tiny_checkpoint

SECTION = "vs-vllm"
CACHE_FILE = CACHE / "vllm-cpu.json"
CHECKPOINT_DIR = CACHE / "checkpoint-vllm"
# 512 hidden, 8 layers, head_dim 64; saved as Qwen3VLForConditionalGeneration (the architecture vLLM knows).
BENCH_SPEC = replace(SMALL_SPEC, layout="released")
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # what vLLM's CPU attention accepts
VLLM_MAX_MODEL_LEN = 2048  # the longest mixed text is ~950 tokens
THREADS = 2
INPUTS_VERSION = "1"  # bump when the inputs change: cached vLLM figures are then not comparable any more
SHORT_WORDS = 30  # + the template's 32 tokens: ~97 tokens with the checkpoint's tokenizer
WORDS = [w.lower() for w in re.findall(r"[A-Za-z']+", " ".join(_CORPUS))]  # the tokenizer's training corpus


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    clients: int
    requests: int
    per_request: int
    kind: str  # short | mixed | image


WORKLOADS = {
    w.key: w
    for w in (
        Workload("short", "32 clients x 1 short text (~97 tokens), 512 requests", 32, 512, 1, "short"),
        Workload("batch", "4 clients x 32 short texts per request, 32 requests", 4, 32, 32, "short"),
        Workload("mixed", "512 texts of 5-400 words (seeded), 1 per request, 32 clients", 32, 512, 1, "mixed"),
        Workload("image", "8 clients x one 512x512 PNG, 64 requests", 8, 64, 1, "image"),
        Workload("single", "1 client, 1 short text, 200 requests: p50 / p99 latency", 1, 200, 1, "short"),
    )
}
WARMUP = (
    Workload("short", "", 32, 64, 1, "short"),
    Workload("batch", "", 4, 4, 32, "short"),
    Workload("mixed", "", 8, 16, 1, "mixed"),
    Workload("image", "", 8, 8, 1, "image"),
    Workload("single", "", 1, 10, 1, "short"),
)


# ---- the checkpoint ---------------------------------------------------------------------------------------------


def _fix_rope_sections(config_path: Path) -> bool:
    """Make `sum(mrope_section) == head_dim // 2` (vLLM checks it at load); True when config.json was changed."""
    config = json.loads(config_path.read_text())
    text = config["text_config"]
    head_dim = int(text["head_dim"])
    if head_dim not in VLLM_HEAD_DIMS:
        raise SystemExit(f"head_dim {head_dim} is not one vLLM's CPU build accepts: {VLLM_HEAD_DIMS}")
    half = head_dim // 2
    changed = False
    for key in ("rope_parameters", "rope_scaling"):
        rope = text.get(key)
        if isinstance(rope, dict) and sum(rope.get("mrope_section", [])) != half:
            hw = half * 20 // 64  # Qwen3-VL's [24, 20, 20] split, scaled
            rope["mrope_section"] = [half - 2 * hw, hw, hw]
            changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return changed


def bench_checkpoint() -> Path:
    if not (CHECKPOINT_DIR / "config.json").is_file():
        build_tiny_checkpoint(CHECKPOINT_DIR, BENCH_SPEC)
    if _fix_rope_sections(CHECKPOINT_DIR / "config.json"):
        print("config.json: M-RoPE sections rewritten to sum to head_dim // 2", flush=True)
    return CHECKPOINT_DIR


def checkpoint_summary(path: Path) -> str:
    text = json.loads((path / "config.json").read_text())["text_config"]
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    return (
        f"random Qwen3-VL, {text['hidden_size']} hidden, {text['num_hidden_layers']} layers, "
        f"{text['num_attention_heads']}/{text['num_key_value_heads']} heads of {text['head_dim']}, "
        f"mrope_section {rope.get('mrope_section')}, float32"
    )


# ---- inputs -----------------------------------------------------------------------------------------------------


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _png_data_uri(rng: random.Random) -> str:
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def make_inputs(workload: Workload, tag: str, seen: set[str]) -> list[list[str]]:
    """Per request, its texts (or image data URIs); distinct from every input in `seen`."""
    rng = random.Random(f"vs_vllm/{INPUTS_VERSION}/{tag}/{workload.key}")
    requests: list[list[str]] = []
    for _ in range(workload.requests):
        items: list[str] = []
        while len(items) < workload.per_request:
            if workload.kind == "image":
                value = _png_data_uri(rng)
            elif workload.kind == "mixed":
                value = _words(rng, rng.randint(5, 400))
            else:
                value = _words(rng, SHORT_WORDS)
            if value not in seen:
                seen.add(value)
                items.append(value)
        requests.append(items)
    return requests


class Renderer:
    """Our adapter's own rendering: the exact prompt string our server tokenises, and its token count."""

    def __init__(self, model_dir: Path) -> None:
        from embedding_api.families.loader import load_family
        from embedding_api.settings import Settings

        self.family: Any = load_family(
            Settings(model_path=str(model_dir), device="cpu", dtype="float32", _env_file=None)
        )
        self.system = self._system_text()

    def _system_text(self) -> str:
        rendered = self.prompt("x")
        match = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", rendered, re.S)
        if match is None:
            raise RuntimeError(f"cannot find the system instruction in {rendered!r}")
        return match.group(1)

    def prepare(self, text: str | None = None, image: Image.Image | None = None) -> tuple[str, int]:
        from embedding_api.items import Item

        item = Item(texts=[text] if text is not None else [], images=[image] if image is not None else [])
        prepared = self.family.prepare(item)
        payload = prepared.payload
        rendered = getattr(payload, "text", None)
        if not isinstance(rendered, str):  # the payload changed shape: render as the adapter does
            from embedding_api.families.qwen3_vl import system_instruction

            instruction = system_instruction(None, self.family.default_instruction)
            rendered = self.family._render(instruction, item.texts, len(item.images), 0)
        return rendered, int(prepared.tokens)

    def prompt(self, text: str) -> str:
        return self.prepare(text)[0]

    def close(self) -> None:
        del self.family
        gc.collect()


@dataclass
class Inputs:
    """One pass's (or the warm-up's) request bodies for both servers, and the token counts our adapter expects."""

    ours: dict[str, list[bytes]] = field(default_factory=dict)
    vllm: dict[str, list[bytes]] = field(default_factory=dict)
    expected_tokens: dict[str, list[int]] = field(default_factory=dict)


def _image_of(data_uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB")


def build_inputs(
    renderer: Renderer, workloads: list[Workload], tag: str, seen: set[str], served_name: str, encoding: str
) -> Inputs:
    inputs = Inputs()
    image_tokens: int | None = None
    for workload in workloads:
        ours: list[bytes] = []
        vllm: list[bytes] = []
        expected: list[int] = []
        for items in make_inputs(workload, tag, seen):
            extra = {"encoding_format": encoding}
            if workload.kind == "image":
                (uri,) = items
                if image_tokens is None:  # all images are 512x512: the same count
                    image_tokens = renderer.prepare(image=_image_of(uri))[1]
                expected.append(image_tokens)
                ours.append(orjson.dumps({"input": [{"type": "image_url", "image_url": {"url": uri}}], **extra}))
                messages = [
                    {"role": "system", "content": [{"type": "text", "text": renderer.system}]},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]},
                ]
                body = {"model": served_name, "messages": messages, "add_generation_prompt": True, **extra}
                vllm.append(orjson.dumps(body))
                continue
            rendered = [renderer.prepare(text) for text in items]
            expected.append(sum(tokens for _, tokens in rendered))
            prompts = [prompt for prompt, _ in rendered]
            if workload.per_request == 1:
                ours.append(orjson.dumps({"input": items[0], **extra}))
                vllm.append(orjson.dumps({"model": served_name, "input": prompts[0], **extra}))
            else:
                ours.append(orjson.dumps({"input": items, **extra}))
                vllm.append(orjson.dumps({"model": served_name, "input": prompts, **extra}))
        inputs.ours[workload.key] = ours
        inputs.vllm[workload.key] = vllm
        inputs.expected_tokens[workload.key] = expected
    return inputs


# ---- the load generator (fixed count) ---------------------------------------------------------------------------

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')


@dataclass
class Measured:
    items: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    tokens: list[int]  # usage.prompt_tokens per request, in request order (-1: failed)
    first_error: str = ""
    foreign_cpu: float = 0.0  # share of the machine's CPU used by other processes meanwhile (noise)
    waited_s: float = 0.0  # seconds waited beforehand for the machine to be quiet

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


async def _fixed(url: str, bodies: list[bytes], per_request: int, clients: int) -> Measured:
    host, port = url.split("//", 1)[1].split(":")
    requests = [_encode(url, body) for body in bodies]
    latencies = [math.nan] * len(requests)
    tokens = [-1] * len(requests)
    errors: list[str] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        connection = _Connection(host, int(port))
        try:
            while next_index < len(requests):
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                status, body = await connection.post(requests[i])
                latencies[i] = (time.perf_counter() - t0) * 1000
                if status == 200:
                    match = _PROMPT_TOKENS.search(body, max(0, len(body) - 400))
                    tokens[i] = int(match.group(1)) if match else -1
                else:
                    errors.append(f"{status}: {body[:300].decode(errors='replace')}")
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(clients, len(requests)))))
    elapsed = time.perf_counter() - started
    good = [ms for ms, t in zip(latencies, tokens, strict=True) if t >= 0]
    return Measured(
        items=sum(per_request for t in tokens if t >= 0),
        seconds=elapsed,
        p50_ms=float(np.percentile(good, 50)) if good else math.nan,
        p99_ms=float(np.percentile(good, 99)) if good else math.nan,
        errors=len(errors),
        tokens=tokens,
        first_error=errors[0] if errors else "",
    )


def run_fixed(url: str, bodies: list[bytes], per_request: int, clients: int) -> Measured:
    return asyncio.run(_fixed(url, bodies, per_request, clients))


# ---- servers ----------------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB; shared pages counted in each)."""
    total_kb = 0
    for current in _tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class CpuMeter:
    """CPU time used by processes other than the server's tree and this one: the machine's noise while measuring."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1

    def _sample(self) -> tuple[float, int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        mine = 0
        for pid in {*_tree(self.server_pid), os.getpid()}:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            mine += int(stat[11]) + int(stat[12])  # utime + stime
        return time.monotonic(), busy, mine

    def start(self) -> None:
        self.first = self._sample()

    def foreign(self) -> float:
        """Share of the machine's CPU (0..1) others used since start()."""
        now = self._sample()
        seconds = now[0] - self.first[0]
        if seconds <= 0:
            return 0.0
        others = max(0, (now[1] - self.first[1]) - (now[2] - self.first[2]))
        return others / self.hz / (seconds * self.cores)

    def wait_quiet(self, limit_s: float, threshold: float = 0.1) -> float:
        """Wait (at most `limit_s`) until others use under `threshold` of the machine for a second; seconds waited."""
        began = time.monotonic()
        while True:
            self.start()
            time.sleep(1.0)
            if self.foreign() < threshold or time.monotonic() - began >= limit_s:
                return time.monotonic() - began - 1.0


class VllmServer:
    """vLLM's CPU build via the shared serve.sh (its own environment), stopped with SIGTERM to its PID."""

    def __init__(self, tools: Path, venv: Path, model_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = model_dir.name
        env = dict(os.environ, LOG=str(log), MAX_MODEL_LEN=str(VLLM_MAX_MODEL_LEN), OMP_NUM_THREADS=str(THREADS))
        self.command = [str(tools / "serve.sh"), str(venv), str(model_dir), str(self.port)]
        self.log = log
        started = subprocess.run(self.command, env=env, check=True, capture_output=True, text=True)
        self.pid = int(started.stdout.split()[-1])

    def _alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def __enter__(self) -> VllmServer:
        def gone() -> str | None:
            return None if self._alive() else f"vLLM exited; see {self.log}:\n{self.log.read_text()[-3000:]}"

        if not wait_for_health(self.url, gone, seconds=900, interval=0.5):
            self.__exit__()
            raise RuntimeError("vLLM did not become ready in 15 minutes")
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self._alive():
            os.kill(self.pid, signal.SIGKILL)


# ---- one server: start, probe, warm up, passes ------------------------------------------------------------------


@dataclass
class ServerRun:
    name: str
    startup_s: float
    rss_ready_mb: float
    rss_after_mb: float
    passes: list[dict[str, Measured]]
    probe_tokens: list[int]
    probe_vectors: list[list[float]]
    seconds: float = 0.0
    measured_at: str = ""
    note: str = ""


def _probe(url: str, bodies: list[bytes]) -> tuple[list[int], list[list[float]]]:
    """A few requests one by one, keeping their token counts and vectors (float JSON)."""
    tokens: list[int] = []
    vectors: list[list[float]] = []
    with httpx.Client(timeout=300) as client:
        for body in bodies:
            payload = orjson.loads(body)
            payload["encoding_format"] = "float"
            response = client.post(f"{url}/v1/embeddings", json=payload)
            if response.status_code != 200:
                raise RuntimeError(f"probe request failed: {response.status_code} {response.text[:500]}")
            answer = response.json()
            tokens.append(int(answer["usage"]["prompt_tokens"]))
            vectors.append([float(x) for x in answer["data"][0]["embedding"]])
    return tokens, vectors


def measure_server(
    name: str,
    url: str,
    pid: int,
    startup_s: float,
    bodies: dict[str, Inputs],
    workloads: list[Workload],
    passes: int,
    quiet_s: float,
) -> ServerRun:
    side = "ours" if name == "ours" else "vllm"
    meter = CpuMeter(pid)
    rss_ready = tree_rss_mb(pid)
    probe_tokens, probe_vectors = _probe(url, getattr(bodies["probe"], side)["probe"])
    print(f"  {name}: ready in {startup_s:.1f} s, RSS {rss_ready:.0f} MB; probe tokens {probe_tokens}", flush=True)
    warm = bodies["warmup"]
    for workload in WARMUP:
        if any(w.key == workload.key for w in workloads):
            run_fixed(url, getattr(warm, side)[workload.key], workload.per_request, workload.clients)
    results: list[dict[str, Measured]] = []
    for p in range(passes):
        current: dict[str, Measured] = {}
        for workload in workloads:
            waited = meter.wait_quiet(quiet_s) if quiet_s > 0 else 0.0
            meter.start()
            measured = run_fixed(
                url, getattr(bodies[f"pass{p + 1}"], side)[workload.key], workload.per_request, workload.clients
            )
            measured.foreign_cpu, measured.waited_s = meter.foreign(), waited
            current[workload.key] = measured
            print(
                f"  {name} pass {p + 1} {workload.key:>6}: {measured.items_per_s:7.2f} items/s, "
                f"p50 {measured.p50_ms:7.1f} ms, p99 {measured.p99_ms:7.1f} ms, {measured.seconds:6.1f} s, "
                f"{sum(t for t in measured.tokens if t > 0)} tokens, others' CPU {measured.foreign_cpu:.0%} "
                f"(waited {waited:.0f} s), errors {measured.errors} {measured.first_error}",
                flush=True,
            )
        results.append(current)
    return ServerRun(
        name=name,
        startup_s=startup_s,
        rss_ready_mb=rss_ready,
        rss_after_mb=tree_rss_mb(pid),
        passes=results,
        probe_tokens=probe_tokens,
        probe_vectors=probe_vectors,
        measured_at=stamp(),
    )


def run_ours(model_dir: Path, extra_env: dict[str, str], **kwargs: Any) -> ServerRun:
    env = {"DEVICE": "cpu", "DTYPE": "float32", "OMP_NUM_THREADS": str(THREADS), **extra_env}
    t0 = time.perf_counter()
    started = time.monotonic()
    server = ServerProcess(["-m", "embedding_api"], model_dir, env)
    with server:
        run = measure_server("ours", server.url, server.process.pid, time.perf_counter() - t0, **kwargs)
    run.seconds = time.monotonic() - started
    return run


def run_vllm(model_dir: Path, tools: Path, venv: Path, **kwargs: Any) -> ServerRun:
    t0 = time.perf_counter()
    started = time.monotonic()
    server = VllmServer(tools, venv, model_dir, CACHE / "vllm-serve.log")
    with server:
        run = measure_server("vLLM", server.url, server.pid, time.perf_counter() - t0, **kwargs)
    run.seconds = time.monotonic() - started
    run.note = f"vLLM {vllm_version(venv)}: `{os.path.relpath(server.command[0], ROOT)} VENV CKPT PORT` "
    run.note += f"with MAX_MODEL_LEN={VLLM_MAX_MODEL_LEN}, OMP_NUM_THREADS={THREADS} (serve.sh defaults otherwise)"
    return run


def vllm_version(venv: Path) -> str:
    found = sorted((venv / "lib").glob("python*/site-packages/vllm_cpu-*.dist-info"))
    return found[-1].name.removeprefix("vllm_cpu-").removesuffix(".dist-info") if found else "?"


# ---- the cache of vLLM's figures --------------------------------------------------------------------------------


def fingerprint(model_dir: Path, encoding: str, quick: bool) -> str:
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    digest.update(orjson.dumps([asdict(w) for w in WORKLOADS.values()]))
    digest.update(f"{INPUTS_VERSION}/{encoding}/{quick}/{THREADS}/{VLLM_MAX_MODEL_LEN}".encode())
    return digest.hexdigest()[:16]


def save_cache(run: ServerRun, key: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    data = asdict(run)
    data["fingerprint"] = key
    data["machine"] = machine()
    CACHE_FILE.write_text(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def load_cache(key: str) -> ServerRun | None:
    if not CACHE_FILE.is_file():
        return None
    data = orjson.loads(CACHE_FILE.read_bytes())
    if data.pop("fingerprint", None) != key:
        print(f"{CACHE_FILE}: measured with other inputs or checkpoint; not compared", flush=True)
        return None
    data.pop("machine", None)
    data["passes"] = [{k: Measured(**m) for k, m in p.items()} for p in data["passes"]]
    return ServerRun(**data)


# ---- the report -------------------------------------------------------------------------------------------------


def _pair(values: list[str]) -> str:
    return " / ".join(values) if values else "-"


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def token_check(ours: ServerRun | None, vllm: ServerRun | None, expected: dict[str, Inputs]) -> list[str]:
    lines: list[str] = []
    runs = [r for r in (ours, vllm) if r is not None]
    probe_expected = expected["probe"].expected_tokens["probe"]
    lines.append(
        "Probe (3 short texts, 1 long, 1 image): tokens our adapter counts "
        + str(probe_expected)
        + "; "
        + "; ".join(f"{r.name} usage.prompt_tokens {r.probe_tokens}" for r in runs)
        + "."
    )
    if ours is not None and vllm is not None:
        cosines = [_cosine(a, b) for a, b in zip(ours.probe_vectors, vllm.probe_vectors, strict=True)]
        lines[-1] += " Cosine ours vs vLLM per probe: " + ", ".join(f"{c:.6f}" for c in cosines) + "."
    mismatches: list[str] = []
    totals: list[str] = []
    for p in range(max((len(r.passes) for r in runs), default=0)):
        want = expected.get(f"pass{p + 1}")
        if want is None:
            continue
        for key, tokens in want.expected_tokens.items():
            got = {r.name: r.passes[p][key].tokens for r in runs if p < len(r.passes) and key in r.passes[p]}
            for name, counts in got.items():
                if len(counts) != len(tokens):  # cached full-size figures beside a --quick run: other requests
                    mismatches.append(f"pass {p + 1} {key}: {name} ran other requests (cached), not compared")
                    continue
                bad = [i for i, (a, b) in enumerate(zip(counts, tokens, strict=True)) if a not in (b, -1)]
                if bad:
                    i = bad[0]
                    mismatches.append(
                        f"pass {p + 1} {key}: {name} differs from our adapter's count on {len(bad)} requests "
                        f"(first: #{i}, {counts[i]} vs {tokens[i]})"
                    )
            if p == 0:
                totals.append(
                    f"{key} {sum(tokens)} ({sum(tokens) / len(tokens) / WORKLOADS[key].per_request:.0f}/item)"
                )
    lines.append("Tokens per workload in pass 1 (total, mean per item): " + ", ".join(totals) + ".")
    lines.append(
        "Token check, every request of every pass: "
        + (
            "; ".join(mismatches)
            if mismatches
            else f"`usage.prompt_tokens` of {' and '.join(r.name for r in runs)} equal to our adapter's count"
        )
        + "."
    )
    return lines


def code_version() -> str:
    """The commit our server ran from, and whether embedding_api/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "embedding_api"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with uncommitted changes in embedding_api/" if dirty else "")


def report(
    ours: ServerRun | None,
    vllm: ServerRun | None,
    vllm_cached: bool,
    workloads: list[Workload],
    expected: dict[str, Inputs],
    command: str,
    extra_env: dict[str, str],
    model_dir: Path,
    total_s: float,
) -> str:
    def items(run: ServerRun | None, key: str) -> list[float]:
        return [p[key].items_per_s for p in run.passes if key in p] if run else []

    def p50(run: ServerRun | None, key: str) -> list[float]:
        return [p[key].p50_ms for p in run.passes if key in p] if run else []

    def p99(run: ServerRun | None, key: str) -> list[float]:
        return [p[key].p99_ms for p in run.passes if key in p] if run else []

    vllm_label = "vLLM (cached)" if vllm_cached else "vLLM"
    lines = [
        "## Side by side with vLLM's CPU build (issue 10)",
        "",
        f"Command: `{command}` (`make bench-vllm`; `--ours-only` compares against cached vLLM figures).  ",
        f"Machine: {machine()}. Date: {stamp()}. Full run: {total_s / 60:.1f} min.  ",
        f"Checkpoint: {checkpoint_summary(model_dir)} (`{model_dir.relative_to(ROOT)}`). Both servers float32, "
        f"{THREADS} threads, warmed up, one at a time, fixed-count workloads; distinct inputs in every pass.  ",
        f"Ours: `python -m embedding_api` at {code_version()}, DEVICE=cpu DTYPE=float32 OMP_NUM_THREADS={THREADS}"
        + (" " + " ".join(f"{k}={v}" for k, v in extra_env.items()) if extra_env else "")
        + ".  ",
    ]
    if vllm is not None:
        lines.append(f"{vllm.note}.  ")
        if vllm_cached:
            lines.append(
                f"**vLLM figures from cache** ({CACHE_FILE.relative_to(ROOT)}, measured {vllm.measured_at}).  "
            )
    lines += [
        "",
        f"| workload | ours items/s (pass 1 / 2) | {vllm_label} items/s (pass 1 / 2) | ours / vLLM (pass 1 / 2) |",
        "|---|---|---|---|",
    ]
    for workload in workloads:
        a, b = items(ours, workload.key), items(vllm, workload.key)
        if workload.key == "single":
            ratios = [f"{y / x:.2f}" for x, y in zip(p50(ours, "single"), p50(vllm, "single"), strict=False)]
            lines.append(
                f"| {workload.label}; p50 (p99) ms | "
                + _pair([f"{x:.1f} ({y:.1f})" for x, y in zip(p50(ours, "single"), p99(ours, "single"), strict=False)])
                + " | "
                + _pair([f"{x:.1f} ({y:.1f})" for x, y in zip(p50(vllm, "single"), p99(vllm, "single"), strict=False)])
                + f" | {_pair(ratios)} (vLLM p50 / ours p50) |"
            )
            continue
        ratios = [f"{x / y:.2f}" for x, y in zip(a, b, strict=False) if y > 0]
        lines.append(
            f"| {workload.label} | {_pair([f'{x:.2f}' for x in a])} | {_pair([f'{x:.2f}' for x in b])} "
            f"| {_pair(ratios)} |"
        )

    def startup(run: ServerRun | None) -> str:
        if run is None:
            return "-"
        return f"{run.startup_s:.1f} s; {run.rss_ready_mb / 1024:.2f} GB (after the passes {run.rss_after_mb / 1024:.2f} GB)"

    lines.append(f"| start-up to ready; RSS when ready, idle | {startup(ours)} | {startup(vllm)} | - |")
    errors = [
        f"{r.name} pass {i + 1} {k}: {m.errors} ({m.first_error})"
        for r in (ours, vllm)
        if r is not None
        for i, p in enumerate(r.passes)
        for k, m in p.items()
        if m.errors
    ]
    lines += ["", *token_check(ours, vllm, expected)]
    noise = []
    for workload in workloads:
        shares = [
            f"{r.name} " + "/".join(f"{p[workload.key].foreign_cpu:.0%}" for p in r.passes if workload.key in p)
            for r in (ours, vllm)
            if r is not None
        ]
        noise.append(f"{workload.key} " + ", ".join(shares))
    lines.append(
        "Other processes' share of the CPU while each workload ran (pass 1/2; above ~10% the figure is disturbed): "
        + "; ".join(noise)
        + "."
    )
    lines.append("Errors: " + ("; ".join(errors) if errors else "none") + ".")
    lines.append(
        "RSS is the server's process tree (vLLM: API server + engine core), shared pages counted in each process. "
        "Ratio for the latency row: vLLM's p50 over ours (above 1: ours answers faster)."
    )
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--ours-only", action="store_true", help="measure only ours; compare with cached vLLM figures")
    side.add_argument("--vllm-only", action="store_true", help="measure only vLLM and cache its figures")
    parser.add_argument("--ours-env", nargs="*", default=[], metavar="KEY=VALUE", help="settings for our server")
    parser.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    parser.add_argument("--quick", action="store_true", help="1/8 of the requests; writes neither report nor cache")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="before each workload, wait up to S seconds for other processes to leave the CPU (0: do not wait)",
    )
    parser.add_argument("--vllm-tools", type=Path, default=ROOT.parent / "shared" / "tools" / "vllm-cpu")
    parser.add_argument("--vllm-venv", type=Path, default=ROOT.parent / ".venv-vllm-cpu")
    args = parser.parse_args()
    began = time.monotonic()
    command = shlex.join(["python", "-m", "bench.vs_vllm", *sys.argv[1:]])
    extra_env = dict(pair.split("=", 1) for pair in args.ours_env)

    workloads = [WORKLOADS[key] for key in WORKLOADS if key in args.workloads]
    if args.quick:
        workloads = [replace(w, requests=max(w.clients, w.requests // 8)) for w in workloads]
    model_dir = bench_checkpoint()
    key = fingerprint(model_dir, args.encoding_format, args.quick)

    print("rendering the inputs with our adapter ...", flush=True)
    renderer = Renderer(model_dir)
    seen: set[str] = set()
    name = model_dir.name
    probe_rng = random.Random(f"vs_vllm/{INPUTS_VERSION}/probe")
    probe_texts = [_words(probe_rng, SHORT_WORDS) for _ in range(3)] + [_words(probe_rng, 400)]
    rendered = [renderer.prepare(text) for text in probe_texts]
    probe = build_inputs(renderer, [Workload("probe", "", 1, 1, 1, "image")], "probe", seen, name, "float")
    probe.ours["probe"][:0] = [orjson.dumps({"input": text}) for text in probe_texts]
    probe.vllm["probe"][:0] = [orjson.dumps({"model": name, "input": prompt}) for prompt, _ in rendered]
    probe.expected_tokens["probe"][:0] = [tokens for _, tokens in rendered]
    bodies: dict[str, Inputs] = {"probe": probe}
    bodies["warmup"] = build_inputs(renderer, list(WARMUP), "warmup", seen, name, args.encoding_format)
    for p in range(args.passes):
        bodies[f"pass{p + 1}"] = build_inputs(renderer, workloads, f"pass{p + 1}", seen, name, args.encoding_format)
    renderer.close()
    print(f"inputs ready ({time.monotonic() - began:.0f} s)", flush=True)

    common: dict[str, Any] = {
        "bodies": bodies,
        "workloads": workloads,
        "passes": args.passes,
        "quiet_s": args.quiet_wait,
    }
    ours = vllm = None
    vllm_cached = False
    if not args.vllm_only:
        print("our server ...", flush=True)
        ours = run_ours(model_dir, extra_env, **common)
    if args.ours_only:
        vllm = load_cache(fingerprint(model_dir, args.encoding_format, False))
        vllm_cached = vllm is not None
        if vllm is None:
            print(f"no cached vLLM figures in {CACHE_FILE}: run `python -m bench.vs_vllm --vllm-only` once", flush=True)
    else:
        if not (args.vllm_venv / "bin" / "python").is_file():
            raise SystemExit(f"no vLLM environment at {args.vllm_venv}: run {args.vllm_tools / 'install.sh'} first")
        print("vLLM ...", flush=True)
        vllm = run_vllm(model_dir, args.vllm_tools, args.vllm_venv, **common)
        if not args.quick and len(workloads) == len(WORKLOADS):
            save_cache(vllm, key)
            print(f"vLLM figures cached in {CACHE_FILE}", flush=True)
        else:
            print("vLLM figures not cached (only a full-size run of every workload is)", flush=True)

    text = report(ours, vllm, vllm_cached, workloads, bodies, command, extra_env, model_dir, time.monotonic() - began)
    print()
    print(text)
    if ours is not None and vllm is not None and not args.quick and not args.no_write:
        write_section(SECTION, text)
        print(f"\nwritten to {Path('docs/benchmarks.md')}", flush=True)


if __name__ == "__main__":
    main()
