"""`python -m embedding_api serve-ray`: start (or join) Ray, run the replicas behind Serve's proxy on HOST:PORT, and
stop them on SIGINT/SIGTERM.

Ray is imported only when the command runs: the parser is built on every `python -m embedding_api`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from pydantic import ValidationError

from embedding_api import environment
from embedding_api.environment import PROCESS_VARIABLES
from embedding_api.settings import Settings

log = logging.getLogger("embedding_api.serve_ray")

COMMAND = "serve-ray"
STOP_MARGIN_S = 10.0  # past SHUTDOWN_TIMEOUT, for Serve to remove the replicas and its proxy
# Past REQUEST_TIMEOUT, when Serve's proxy gives up on a request: a replica answers its own timeout (504) first, so
# this only ends a request stranded on a replica that died under it, which Serve's proxy can otherwise wait on forever.
PROXY_TIMEOUT_MARGIN_S = 5.0


def proxy_http_options(settings: Settings) -> dict[str, Any]:
    """Serve's HTTP proxy: our address, and an end-to-end bound on every request."""
    return {
        "host": settings.host,
        "port": settings.port,
        "request_timeout_s": settings.request_timeout + PROXY_TIMEOUT_MARGIN_S,
    }


def add_serve_ray_command(commands: Any) -> None:
    """The `serve-ray` subcommand and its options (on `commands`, the main parser's subparsers)."""
    parser = commands.add_parser(
        COMMAND,
        help="serve MODEL_PATH from Ray Serve replicas (one model each) on HOST:PORT",
        description=(
            "Serve MODEL_PATH from Ray Serve replicas behind Serve's HTTP proxy on HOST:PORT. Each replica builds the "
            "same app `serve` runs (same routes, auth, limits, metrics) and loads its own model on its own device. "
            "Every setting (environment and .env) reaches the replicas. Needs requirements-ray.txt."
        ),
    )
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=1, metavar="N", help="a fixed number of replicas (default 1)")
    count.add_argument("--max-replicas", type=int, metavar="B", help="autoscale up to B replicas")
    parser.add_argument("--min-replicas", type=int, default=1, metavar="A", help="autoscaling: down to A (default 1)")
    parser.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        metavar="T",
        help="autoscaling: requests in progress per replica Serve aims at (default 8)",
    )
    parser.add_argument(
        "--num-cpus", type=float, default=1.0, metavar="C", help="CPUs per replica, also its thread count (default 1)"
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        metavar="G",
        help="GPUs per replica, may be fractional (default: 1 when DEVICE is cuda, or auto on a cluster with GPUs)",
    )
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        metavar="M",
        help="requests Serve sends one replica at once (default MAX_CONCURRENT_REQUESTS)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="join this Ray cluster (`auto`: the one `ray start` runs here); default: start a local one",
    )


def replica_options(args: argparse.Namespace) -> Any:
    from embedding_api.scale.ray_serve import ReplicaOptions

    return ReplicaOptions(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        max_ongoing_requests=args.max_ongoing_requests,
    )


def replica_environment() -> dict[str, str]:
    """What each replica (and the proxy) gets in its process environment: the process variables set here (from
    the environment or .env, see environment.py) and the proxy's error answers."""
    from embedding_api.scale.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE

    env = {name: os.environ[name] for name in sorted(PROCESS_VARIABLES) if name in os.environ}
    env[PROXY_CALLBACK_VARIABLE] = PROXY_CALLBACK
    return env


def serve_ray(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 1 when the replicas cannot start."""
    from embedding_api.observability.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    for warning in environment.unknown_key_warnings():
        log.warning(warning)
    try:
        options = replica_options(args)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"error: {error['msg']}", file=sys.stderr)
        return 1

    # Ray folds log lines that look alike from different processes into one: every access line is wanted here.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from ray import serve

    from embedding_api.scale.ray_serve import APP_NAME, build_application, gpus_per_replica

    env = replica_environment()
    started_here = args.address is None
    if started_here:
        os.environ.update(env)  # every process of the local cluster (raylet, proxy, replicas) inherits these
    # "local": a new instance even where `ray start` runs one (Ray would join that one otherwise).
    ray.init(address=args.address or "local", runtime_env={"env_vars": env})
    stop = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):  # while the replicas start: leave serve.run's wait
        signal.signal(stop_signal, _interrupt)
    try:
        serve.start(http_options=proxy_http_options(settings))
        num_gpus = gpus_per_replica(options, settings.device, float(ray.cluster_resources().get("GPU", 0)))
        application = build_application(settings, options, num_gpus=num_gpus, env_vars=env)
        started = time.monotonic()
        try:
            serve.run(application, name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:
            print(f"error: the replicas did not start: {why_not_started(exc)}", file=sys.stderr)
            return 1
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda *_: stop.set())
        count = options.replicas if options.max_replicas is None else f"{options.min_replicas}-{options.max_replicas}"
        log.info(
            "serving on http://%s:%d: %s replica(s) ready in %.1f s (%g CPU, %g GPU each)",
            settings.host,
            settings.port,
            count,
            time.monotonic() - started,
            options.num_cpus,
            num_gpus,
        )
        stop.wait()
        log.info("stopping: requests in progress get up to SHUTDOWN_TIMEOUT=%g s", settings.shutdown_timeout)
        return 0
    except KeyboardInterrupt:
        log.info("stopping before the replicas were ready")
        return 0
    finally:
        _stop(started_here, settings.shutdown_timeout)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def why_not_started(exc: RuntimeError, app_name: str | None = None) -> str:
    """The replicas' own error (Serve's status ends with the exception its last replica raised), else Serve's."""
    from ray import serve

    from embedding_api.scale.ray_serve import APP_NAME, DEPLOYMENT_NAME

    try:
        message = serve.status().applications[app_name or APP_NAME].deployments[DEPLOYMENT_NAME].message
    except Exception:  # no status to read: Serve's own words
        return str(exc)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1].removeprefix("RuntimeError: ") if lines else str(exc)


def _stop(started_here: bool, shutdown_timeout: float) -> None:
    """Our application goes (its replicas drain first); Serve and Ray too when this process started them.

    Bounded: when Ray itself is gone already (a SIGTERM sent to the whole process group reaches its processes
    too), Serve's calls would wait a minute for it."""
    import ray
    from ray import serve

    from embedding_api.scale.ray_serve import APP_NAME

    def stop_serve() -> None:
        try:
            serve.delete(APP_NAME)
            if started_here:
                serve.shutdown()
        except Exception:  # Serve never came up, or went already: nothing of ours is left to stop
            log.warning("stopping Ray Serve failed", exc_info=True)

    stopping = threading.Thread(target=stop_serve, name="serve-stop", daemon=True)
    stopping.start()
    stopping.join(shutdown_timeout + STOP_MARGIN_S)
    if stopping.is_alive():
        log.warning("Ray Serve did not stop within SHUTDOWN_TIMEOUT + %g s; leaving it", STOP_MARGIN_S)
    ray.shutdown()
