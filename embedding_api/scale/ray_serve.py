"""The HTTP application as Ray Serve replicas: every replica builds `create_app(settings)` itself, on its own device.

Each replica is the same ASGI app `python -m embedding_api` serves (routes, auth, limits, metrics, errors), built in
the replica's process at start, so each loads its own model; Ray Serve's HTTP proxy spreads requests over them.
A replica counts as started only once its model is loaded and warmed up (one whose load failed fails Serve's first
health check with the load's error; Serve retries, then marks the deployment failed), and every answer names its
replica in `x-replica`.

Two ways in:
- `python -m embedding_api serve-ray` (`scale/command.py`): the settings of the process that starts it travel to
  the replicas as values, its process variables (OMP_NUM_THREADS, HF_*, ...) as runtime_env env_vars;
- `serve run embedding_api.scale.ray_serve:app` (or `:app_builder` with `key=value` arguments, or a KubeRay
  `serveConfigV2`, see deploy/rayservice.yaml): each replica reads its settings from its own environment and `.env`,
  as `python -m embedding_api` does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from embedding_api import environment

# A replica imports this module first: `.env`'s process variables before the imports below bring in torch.
environment.apply_process_variables()

import ray  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, model_validator  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve import Application, Deployment  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from embedding_api.http.app import create_app  # noqa: E402
from embedding_api.observability.logs import configure_logging  # noqa: E402
from embedding_api.scale.proxy_errors import REPLICA_HEADER  # noqa: E402
from embedding_api.settings import Settings  # noqa: E402

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "EmbeddingReplica"
APP_NAME = "embedding_api"
LOAD_POLL_S = 0.05
REQUEST_ID = b"x-request-id"
# Never handed to replicas: Ray gives each replica its own GPUs through it.
RAY_MANAGED_VARIABLES = frozenset({"CUDA_VISIBLE_DEVICES"})


class ReplicaOptions(BaseModel):
    """How many replicas and what each holds; also the `args` of `app_builder` (serve run ... key=value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(1, ge=1, description="Fixed number of replicas (ignored when max_replicas is set).")
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest replicas.")
    max_replicas: int | None = Field(None, ge=1, description="Autoscaling: most replicas; set = autoscaling on.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Autoscaling: requests in progress per replica that Serve aims at."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica (also its OMP_NUM_THREADS).")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per replica; empty = 1 when DEVICE is cuda (or auto on a cluster with GPUs)."
    )
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Requests Serve sends one replica at once; empty = MAX_CONCURRENT_REQUESTS."
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> ReplicaOptions:
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} is above max_replicas={self.max_replicas}")
        return self


def gpus_per_replica(options: ReplicaOptions, device: str, cluster_gpus: float) -> float:
    """options.num_gpus, else one GPU when the replicas are to run on CUDA (DEVICE=cuda, or auto with GPUs)."""
    if options.num_gpus is not None:
        return options.num_gpus
    on_cuda = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
    return 1.0 if on_cuda else 0.0


def replica_device(device: str, num_gpus: float) -> str:
    """A replica sees only the GPUs Ray gave it, numbered from 0: DEVICE=cuda:N means "a GPU" there."""
    return "cuda" if num_gpus > 0 and device.startswith("cuda:") else device


class ReplicaApp:
    """The app as a replica serves it: its answers carry `x-replica`, and its lifespan startup completes only once
    every model has loaded or failed, so Serve routes nothing to a replica still loading; Serve's first health
    check, right after, fails a replica whose load failed (with the load's error: see `health_problem`)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app: ASGIApp = app
        self.runtime = app.state.runtime
        self.replica = replica.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._after_loading(send))
            return

        # Serve's proxy puts an x-request-id in every request and adds it to the answer itself: ours (the same id,
        # as our middleware keeps a valid incoming one) would be a second copy.
        proxy_id = next((value for key, value in scope.get("headers", []) if key.lower() == REQUEST_ID), None)

        async def with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID or v != proxy_id]
                message = {**message, "headers": [*headers, (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, with_replica if scope["type"] == "http" else send)

    def _after_loading(self, send: Send) -> Send:
        async def send_when_loaded(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                while self.runtime.status == "loading":
                    await asyncio.sleep(LOAD_POLL_S)
            await send(message)

        return send_when_loaded


async def health_problem(runtime: Any) -> str | None:
    """Why this replica should be replaced (its load failed, or its engine keeps failing, when /health answers
    503), or None. A failed start-up health check shows the load's own error in `serve status`."""
    if runtime.status == "error":
        return str(runtime.detail or "the model failed to load")
    if not await runtime.engine_is_healthy():
        return "the engine keeps failing: embeddings do not complete"
    return None


@serve.ingress()
class EmbeddingReplica:
    """One replica: its own Settings, app, engine and model. The app is built by Serve calling
    `__serve_build_asgi_app__` after the constructor, then Serve runs the app's lifespan (the model load)."""

    def __init__(self, settings_values: dict[str, Any] | None = None) -> None:
        # None: this replica's own environment and .env (serve run, KubeRay); else the starter's settings, exactly.
        settings = Settings(**(settings_values or {}))
        device = replica_device(settings.device, len(ray.get_gpu_ids()))
        self.settings = settings if device == settings.device else settings.model_copy(update={"device": device})
        configure_logging(self.settings.log_level, self.settings.log_format)
        if device != settings.device:
            log.info("DEVICE=%s: this replica's GPU is %s here (Ray shows it only its own)", settings.device, device)
        self.fastapi_app: Any = None

    def __serve_build_asgi_app__(self) -> ASGIApp:
        replica = serve.get_replica_context().replica_tag
        # No on_fatal (one server stops itself then): a replica that cannot serve fails its health check instead.
        self.fastapi_app = create_app(self.settings)
        return ReplicaApp(self.fastapi_app, replica)

    async def check_health(self) -> None:
        """Serve's probe, once after start-up then periodically: a failing replica is stopped and replaced."""
        problem = await health_problem(self.fastapi_app.state.runtime)
        if problem is not None:
            raise RuntimeError(problem)


EMBEDDING_DEPLOYMENT: Deployment = serve.deployment(name=DEPLOYMENT_NAME)(EmbeddingReplica)


def build_application(
    settings: Settings,
    options: ReplicaOptions,
    *,
    num_gpus: float,
    env_vars: dict[str, str] | None = None,
    replicas_read_environment: bool = False,
) -> Application:
    """The Serve application: `EmbeddingReplica` with these replica counts and resources.

    The replicas get `settings`' values, or with `replicas_read_environment` read their own environment (`settings`
    then only sizes what Serve needs). `env_vars` are set in each replica's process before anything is imported
    there (torch reads OMP_NUM_THREADS and friends once, at import)."""
    values = None
    if not replicas_read_environment:
        values = settings.model_dump()
        values["_env_file"] = None  # every value is given: nothing for a replica's own .env to fill in
    actor_options: dict[str, Any] = {"num_cpus": options.num_cpus, "num_gpus": num_gpus}
    env = {key: value for key, value in (env_vars or {}).items() if key not in RAY_MANAGED_VARIABLES}
    if env:
        actor_options["runtime_env"] = {"env_vars": env}
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.max_replicas is not None:
        scaling = {
            "autoscaling_config": {
                "min_replicas": options.min_replicas,
                "max_replicas": options.max_replicas,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
    deployment = EMBEDDING_DEPLOYMENT.options(
        ray_actor_options=actor_options,
        max_ongoing_requests=options.max_ongoing_requests or settings.max_concurrent_requests,
        # Serve lets requests in progress finish for this long when a replica stops, as SIGTERM does for one server.
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
        # Our app writes one access line per request (with its request id): Serve's own would be a second.
        logging_config={"enable_access_log": False, "log_level": settings.log_level.upper()},
        **scaling,
    )
    return deployment.bind(values)


def app_builder(args: dict[str, Any]) -> Application:
    """`serve run embedding_api.scale.ray_serve:app_builder replicas=2 num_gpus=1`: ReplicaOptions from `args`;
    the replicas read their settings from their own environment."""
    options = ReplicaOptions.model_validate(args)
    settings = Settings()  # what the replicas will read too, where they share this (building) process's environment
    cluster_gpus = 0.0
    if options.num_gpus is None and ray.is_initialized():
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = gpus_per_replica(options, settings.device, cluster_gpus)
    return build_application(settings, options, num_gpus=num_gpus, replicas_read_environment=True)


def __getattr__(name: str) -> Application:
    """`serve run embedding_api.scale.ray_serve:app`: the application with default options, built on first use
    (not at import, so that importing this module reads no settings)."""
    if name == "app":
        return app_builder({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
