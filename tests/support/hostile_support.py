"""Shared by the hostile-load suites: the server as its own process, a /health probe in a process of its own, and
small client helpers. Loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.conftest import API_KEY, free_port
from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


LAUNCHER = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
sys.argv = ["embedding_api"]
runpy.run_module("embedding_api", run_name="__main__", alter_sys=True)
"""


class ServerProcess:
    """`python -m embedding_api` from `root` on a free port; settings as environment variables; `nofile` sets the
    (soft, hard) open-file limits it starts with."""

    def __init__(
        self, model_dir: Path, workdir: Path, root: Path = ROOT, nofile: tuple[int, int] | None = None, **settings: Any
    ) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            PYTHONPATH=str(root),
            MODEL_PATH=str(model_dir),
            HOST="127.0.0.1",
            PORT=str(self.port),
            API_KEY=API_KEY,
            LOG_LEVEL="warning",
            DEVICE="cpu",
            ALLOW_PRIVATE_MEDIA_URLS="true",
        )
        env.update({name.upper(): str(value) for name, value in settings.items()})

        command = [sys.executable, "-m", "embedding_api"]
        if nofile is not None:  # the limits set in the process itself, then `python -m embedding_api` as usual
            command = [sys.executable, "-c", LAUNCHER, str(nofile[0]), str(nofile[1])]
        self.log = workdir / f"server-{self.port}.log"
        with self.log.open("wb") as log:  # run from an empty folder, so no `.env` of the checkout applies
            self.process = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=log)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", headers=HEADERS, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.close()
        raise AssertionError("the server did not become ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def file_limits(self) -> tuple[int, int]:
        for line in Path(f"/proc/{self.process.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no open-file limit")

    def warm_up(self) -> float:
        """A few requests, then the RSS baseline."""
        for _ in range(3):
            response = httpx.post(f"{self.url}/v1/embeddings", json={"input": "warm up"}, headers=HEADERS, timeout=30)
            assert response.status_code == 200, response.text
        return self.rss_mb()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class RssSampler:
    """The server's peak RSS while in use, sampled every 50 ms."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = server.rss_mb()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.server.rss_mb())
            except (OSError, AssertionError):
                return

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


PROBE_SCRIPT = """
import json, sys, threading, time
import httpx
url, key = sys.argv[1], sys.argv[2]
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
latencies, failures, statuses = [], 0, {}
limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per probe
with httpx.Client(timeout=5, limits=limits, headers={"Authorization": f"Bearer {key}"}) as client:
    while not done.is_set():
        started = time.perf_counter()
        try:
            status = client.get(url).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        elapsed = time.perf_counter() - started
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != 200:
            failures += 1
            elapsed = max(elapsed, 5.0)
        if not latencies:
            print("ready", flush=True)
        latencies.append(elapsed)
        done.wait(0.05)
print(json.dumps({"latencies": latencies, "failures": failures, "statuses": statuses}), flush=True)
"""


class HealthProbe:
    """GET /health every 50 ms from a process of its own while in use; a failure counts as its 5 s timeout."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self.statuses: dict[str, int] = {}
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProbe:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROBE_SCRIPT, f"{self.url}/health", API_KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        out, _ = self.process.communicate(input="", timeout=30)
        result = json.loads(out.strip().splitlines()[-1])
        self.latencies, self.failures, self.statuses = result["latencies"], result["failures"], result["statuses"]

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("inf")

    def summary(self) -> str:
        median = sorted(self.latencies)[len(self.latencies) // 2] if self.latencies else float("inf")
        return (
            f"/health: {len(self.latencies)} probes, {self.failures} failed {self.statuses}, median {median:.3f} s, "
            f"p99 {self.p99:.3f} s, max {max(self.latencies, default=float('inf')):.3f} s"
        )


class HasRss(Protocol):
    def rss_mb(self) -> float: ...


def wait_for_rss(server: HasRss, ceiling_mb: float, seconds: float = 15.0) -> float:
    """The server's RSS once it is at or under `ceiling_mb`, or the last reading after `seconds`."""
    deadline = time.monotonic() + seconds
    rss = server.rss_mb()
    while rss > ceiling_mb and time.monotonic() < deadline:
        time.sleep(0.5)
        rss = server.rss_mb()
    return rss


async def timed_post(client: httpx.AsyncClient, body: dict[str, Any], timeout: float) -> tuple[int, float, str]:
    """(status, seconds, body text); status 0 when the client gave up after `timeout`."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/embeddings", json=body, timeout=timeout)
    except (httpx.HTTPError, TimeoutError) as exc:
        return 0, time.perf_counter() - started, type(exc).__name__
    return response.status_code, time.perf_counter() - started, response.text[:300]


def new_client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return httpx.AsyncClient(base_url=url, headers=HEADERS, limits=limits)
