"""Replicas on Ray Serve, on a local Ray on the CPU with the tiny checkpoint: `serve-ray` starts and stops cleanly,
two replicas both answer, their vectors and errors are the single server's, and a replica killed under load is
replaced while every request completes (some after a retryable 503)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import API_KEY, data_uri, free_port, image_bytes, make_image, make_settings
from tests.support.cli import cli_env, wait_healthy

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from embedding_api.scale.command import proxy_http_options, why_not_started  # noqa: E402
from embedding_api.scale.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE  # noqa: E402
from embedding_api.scale.ray_serve import APP_NAME, DEPLOYMENT_NAME, ReplicaOptions, build_application  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = {"Authorization": f"Bearer {API_KEY}"}
REPLICA_PREFIX = f"SERVE_REPLICA::{APP_NAME}#{DEPLOYMENT_NAME}#"
RETRYABLE = {502, 503}


@dataclass
class Cluster:
    url: str
    client: httpx.Client


@pytest.fixture(scope="module")
def cluster(tiny_model_dir: Path) -> Iterator[Cluster]:
    # The proxy's error answers come from our middleware; the variable reaches the proxy through the job's env.
    ray.init(
        address="local",  # our own instance, even where `ray start` runs another
        num_cpus=3,
        include_dashboard=False,
        runtime_env={"env_vars": {PROXY_CALLBACK_VARIABLE: PROXY_CALLBACK}},
    )
    try:
        port = free_port()
        settings = make_settings(tiny_model_dir, host="127.0.0.1", port=port)
        serve.start(http_options=proxy_http_options(settings))
        application = build_application(settings, ReplicaOptions(replicas=2), num_gpus=0)
        serve.run(application, name=APP_NAME, route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=KEY, timeout=30) as client:
            yield Cluster(f"http://127.0.0.1:{port}", client)
    finally:
        serve.shutdown()
        ray.shutdown()


def _replica_actors() -> list[str]:
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(REPLICA_PREFIX)
    )


def _embed_many(url: str, count: int, threads: int = 8, body: dict[str, Any] | None = None) -> list[httpx.Response]:
    """`count` requests (`body`, else a different text each) from `threads` clients at once."""
    answers: list[httpx.Response] = []

    def client_loop(offset: int) -> None:
        with httpx.Client(base_url=url, headers=KEY, timeout=30) as client:
            for i in range(offset, count, threads):
                answers.append(client.post("/v1/embeddings", json=body or {"input": f"text number {i}"}))

    workers = [threading.Thread(target=client_loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return answers


# ---- the command (first: it starts and stops its own Ray before the module's cluster starts) -------------------


@pytest.mark.timeout(150)
def test_serve_ray_command_serves_then_stops_cleanly_on_sigterm(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(PORT=str(port), HOST="127.0.0.1", MODEL_PATH=str(tiny_model_dir), DEVICE="cpu", API_KEY=API_KEY)
    log_path = tmp_path / "serve-ray.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedding_api", "serve-ray", "--replicas", "1", "--num-cpus", "0.5"],
            cwd=tmp_path,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        health = wait_healthy(url, process, 100)
        assert health is not None and health.status_code == 200, log_path.read_text(errors="replace")[-4000:]
        assert health.json()["device"] == "cpu" and health.headers["x-replica"]
        # The settings came from this environment: the key is required.
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, timeout=30).status_code == 401
        answer = httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, headers=KEY, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 64
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-4000:]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


# ---- two replicas ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_two_replicas_both_serve(cluster: Cluster) -> None:
    answers = _embed_many(cluster.url, 48)
    assert [a.status_code for a in answers] == [200] * 48
    replicas = Counter(a.headers["x-replica"] for a in answers)
    assert len(replicas) == 2, replicas
    assert {f"{REPLICA_PREFIX}{r}" for r in replicas} == set(_replica_actors())
    assert all(a.headers.get_list("x-request-id") and len(a.headers.get_list("x-request-id")) == 1 for a in answers)


@pytest.mark.timeout(60)
def test_vectors_equal_the_single_servers(cluster: Cluster, client: TestClient) -> None:
    image = data_uri(image_bytes(make_image(40, 32, seed=3)))
    bodies: list[dict[str, Any]] = [
        {"input": ["a photo of a cat", "the quarterly report was late again", "x"]},
        {
            "input": [
                {"type": "image", "data": image},
                [{"type": "text", "text": "a cat"}, {"type": "image", "data": image}],
            ],
            "dimensions": 32,
        },
        {"input": "find the cat", "instruction": "Retrieve images that match the query."},
    ]
    for body in bodies:
        single = client.post("/v1/embeddings", json=body)
        assert single.status_code == 200, single.text
        expected = np.array([row["embedding"] for row in single.json()["data"]])
        answers = _embed_many(cluster.url, 16, body=body)  # at once: both replicas answer
        assert len({answer.headers.get("x-replica") for answer in answers}) == 2
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"] == single.json()["usage"]
            ours = np.array([row["embedding"] for row in answer.json()["data"]])
            assert ours.shape == expected.shape
            np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.timeout(60)
def test_errors_and_auth_have_the_single_servers_shape(cluster: Cluster, client: TestClient) -> None:
    cases: list[tuple[str, str, dict[str, Any] | None, dict[str, str] | None]] = [
        ("POST", "/v1/embeddings", {"input": 5}, None),  # a bad input: 400
        ("POST", "/v1/embeddings", {"input": "hi", "model": "nope"}, None),  # an unknown model: 404
        ("POST", "/v1/embeddings", {"input": "hi", "dimensions": 0}, None),  # a bad option: 400
        ("POST", "/v1/embeddings", {"input": "hi"}, {"Authorization": "Bearer wrong"}),  # a wrong key: 401
        ("GET", "/v1/nowhere", None, None),  # no such route: 404
        ("GET", "/v1/embeddings", None, None),  # wrong method: 405
    ]
    for method, path, body, headers in cases:
        single = client.request(method, path, json=body, headers=headers)
        ours = cluster.client.request(method, path, json=body, headers=headers)
        assert single.status_code >= 400
        assert (ours.status_code, ours.json()) == (single.status_code, single.json()), (path, body)
        assert ours.headers["x-replica"]
    unkeyed = httpx.post(f"{cluster.url}/v1/embeddings", json={"input": "hi"}, timeout=30)
    assert unkeyed.status_code == 401 and unkeyed.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{cluster.url}/health", timeout=30).status_code == 200  # public, as in one server
    assert "embedding_api" in httpx.get(f"{cluster.url}/metrics", timeout=30).text


# ---- a replica killed under load --------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients that send requests until told to stop, retrying a 502/503 or a lost connection, and count."""

    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    finals: Counter[str] = field(default_factory=Counter)  # per request: ok, gave-up, hung, or its error status
    retried: Counter[str] = field(default_factory=Counter)  # per attempt that was retried: 503, 502 or transport
    replicas: Counter[str] = field(default_factory=Counter)
    bodies_503: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, number: int) -> None:
        with httpx.Client(base_url=self.url, headers=KEY, timeout=20) as client:
            while not self.stop.is_set():
                final = self._one(client, f"client {number} text")
                with self.lock:
                    self.finals[final] += 1

    def _one(self, client: httpx.Client, text: str) -> str:
        for _ in range(40):
            try:
                answer = client.post("/v1/embeddings", json={"input": [text, "another"]})
            except httpx.TimeoutException:
                return "hung"  # accepted and never answered within 20 s
            except httpx.TransportError:
                with self.lock:
                    self.retried["transport"] += 1
                time.sleep(0.1)
                continue
            if answer.status_code in RETRYABLE:
                with self.lock:
                    self.retried[str(answer.status_code)] += 1
                    self.bodies_503.append(answer.json())
                time.sleep(0.1)
                continue
            if answer.status_code != 200:
                return str(answer.status_code)
            if len(answer.json()["data"]) != 2:
                return "wrong-answer"
            with self.lock:
                self.replicas[answer.headers["x-replica"]] += 1
            return "ok"
        return "gave-up"


@pytest.mark.timeout(150)
def test_a_replica_killed_under_load_is_replaced_and_no_request_is_lost(cluster: Cluster) -> None:
    before = _replica_actors()
    assert len(before) == 2
    load = Load(cluster.url)
    clients = [threading.Thread(target=load.run, args=(n,), daemon=True) for n in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(1.5)
    victim = before[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()

    # Replaced: a new replica actor, Serve reports two healthy replicas, and the new one answers.
    deadline = time.monotonic() + 90
    replaced = False
    while time.monotonic() < deadline:
        now = _replica_actors()
        new = set(now) - set(before)
        status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
        serving = {f"{REPLICA_PREFIX}{r}" for r in load.replicas}
        if (
            victim not in now
            and len(now) == 2
            and status.replica_states == {"RUNNING": 2}
            and status.status == "HEALTHY"
            and new <= serving
            and new
        ):
            replaced = True
            break
        time.sleep(0.25)
    replaced_after = time.monotonic() - killed_at
    load.stop.set()
    for thread in clients:
        thread.join(timeout=40)
    print(f"replaced in {replaced_after:.1f} s; finals {dict(load.finals)}; retried {dict(load.retried)}")

    assert replaced, (_replica_actors(), serve.status())
    assert not any(thread.is_alive() for thread in clients), "a request hung"
    assert set(load.finals) == {"ok"}, load.finals  # every request completed: none hung, none failed for good
    assert load.finals["ok"] > 20
    assert set(load.retried) <= {"503", "502", "transport"}
    for body in load.bodies_503:  # the proxy's answer for a lost replica, in our error shape
        assert body["error"]["type"] == "service_unavailable" and "retry" in body["error"]["message"]
    after = set(_replica_actors())
    assert len({f"{REPLICA_PREFIX}{r}" for r in load.replicas} & after) == 2  # the survivor and the newcomer


# ---- a replica that cannot load ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_model_that_cannot_load_fails_the_deployment_with_its_own_error(cluster: Cluster, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "no-model-here")
    application = build_application(settings, ReplicaOptions(replicas=1, num_cpus=0.5), num_gpus=0)
    with pytest.raises(RuntimeError) as failure:
        serve.run(application, name="broken", route_prefix="/broken")
    try:
        assert "no-model-here" in why_not_started(failure.value, "broken")  # the load's error, as serve-ray says it
        assert cluster.client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200
    finally:
        serve.delete("broken")
