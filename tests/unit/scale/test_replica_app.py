"""The app as a replica serves it: `x-replica` on every answer, one x-request-id, a lifespan that completes only
once the model has loaded (or failed), and the health check that fails a replica that cannot serve."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from embedding_api.scale.ray_serve import ReplicaApp, health_problem


class FakeApp:
    """An ASGI app with `state.runtime`: echoes x-request-id as our middleware does; lifespan completes at once."""

    def __init__(self, status: str = "ok") -> None:
        self.state = SimpleNamespace(runtime=SimpleNamespace(status=status, detail=None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"made-here")
        headers = [(b"content-type", b"text/plain"), (b"x-request-id", incoming)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def test_answers_name_the_replica_and_carry_no_second_request_id() -> None:
    client = TestClient(ReplicaApp(FakeApp(), "r1"))
    from_proxy = client.get("/health", headers={"x-request-id": "abc"})  # the proxy adds its own copy later
    assert from_proxy.headers["x-replica"] == "r1"
    assert "x-request-id" not in from_proxy.headers
    ours = client.get("/health")  # no id came in: ours is the only one, kept
    assert ours.headers.get_list("x-request-id") == ["made-here"] and ours.headers["x-replica"] == "r1"


async def _startup(app: FakeApp, load: Any = None) -> list[Message]:
    """Run the lifespan startup; `load` changes the runtime meanwhile. The messages sent to the server."""
    sent: list[Message] = []
    messages: asyncio.Queue[Message] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.create_task(ReplicaApp(app, "r1")({"type": "lifespan"}, messages.get, send))
    await asyncio.sleep(0.2)
    assert sent == [] or load is None  # still loading: nothing said yet
    if load is not None:
        load(app.state.runtime)
    await asyncio.wait_for(task, 5)
    return sent


def test_startup_completes_once_the_model_is_loaded() -> None:
    def loaded(runtime: Any) -> None:
        runtime.status = "ok"

    assert asyncio.run(_startup(FakeApp("loading"), loaded)) == [{"type": "lifespan.startup.complete"}]


def test_startup_waits_for_a_failed_load_too_and_the_health_check_gives_its_error() -> None:
    def failed(runtime: Any) -> None:
        runtime.status, runtime.detail = "error", "MODEL_PATH=/nowhere: no such folder"

    app = FakeApp("loading")
    assert asyncio.run(_startup(app, failed)) == [{"type": "lifespan.startup.complete"}]
    assert asyncio.run(health_problem(app.state.runtime)) == "MODEL_PATH=/nowhere: no such folder"


def test_the_health_check_passes_a_working_replica_and_fails_a_stuck_engine() -> None:
    healthy = True

    async def engine_is_healthy() -> bool:
        return healthy

    runtime = SimpleNamespace(status="ok", detail=None, engine_is_healthy=engine_is_healthy)
    assert asyncio.run(health_problem(runtime)) is None
    healthy = False
    assert "engine keeps failing" in str(asyncio.run(health_problem(runtime)))
