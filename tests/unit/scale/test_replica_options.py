"""What Serve is told: replica counts or autoscaling, resources, the settings and process variables for replicas,
and the `serve-ray` options and `serve run` builder arguments that lead there."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from embedding_api.cli import build_parser
from embedding_api.scale import ray_serve
from embedding_api.scale.command import proxy_http_options, replica_environment, replica_options
from embedding_api.scale.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from embedding_api.scale.ray_serve import (
    ReplicaOptions,
    app_builder,
    build_application,
    gpus_per_replica,
    replica_device,
)
from embedding_api.settings import Settings


def _deployment(application: Any) -> Any:
    return application._bound_deployment


def test_fixed_replicas_with_the_settings_and_variables_for_each() -> None:
    settings = Settings(_env_file=None, api_key="k1", max_concurrent_requests=40, shutdown_timeout=12)
    env = {"CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "4"}
    deployment = _deployment(build_application(settings, ReplicaOptions(replicas=3), num_gpus=1, env_vars=env))
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options == {
        "num_cpus": 1.0,
        "num_gpus": 1,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "4"}},  # Ray sets CUDA_VISIBLE_DEVICES per replica
    }
    assert deployment.max_ongoing_requests == 40
    assert deployment._deployment_config.graceful_shutdown_timeout_s == 12
    (values,) = deployment.init_args
    assert Settings(**values) == settings


def test_autoscaling() -> None:
    options = ReplicaOptions(min_replicas=0, max_replicas=4, target_ongoing_requests=16, max_ongoing_requests=64)
    deployment = _deployment(build_application(Settings(_env_file=None), options, num_gpus=0))
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (0, 4, 16)
    assert deployment.max_ongoing_requests == 64
    with pytest.raises(ValidationError, match="above max_replicas"):
        ReplicaOptions(min_replicas=5, max_replicas=2)


def test_gpus_and_the_device_a_replica_sees() -> None:
    assert gpus_per_replica(ReplicaOptions(), "cuda", 0) == 1
    assert gpus_per_replica(ReplicaOptions(), "cuda:1", 0) == 1
    assert gpus_per_replica(ReplicaOptions(), "auto", 4) == 1
    assert gpus_per_replica(ReplicaOptions(), "auto", 0) == 0
    assert gpus_per_replica(ReplicaOptions(), "cpu", 4) == 0
    assert gpus_per_replica(ReplicaOptions(num_gpus=0.5), "cuda", 4) == 0.5
    assert replica_device("cuda:1", 1) == "cuda"  # its one GPU is cuda:0 there
    assert replica_device("cuda:1", 0) == "cuda:1"
    assert replica_device("cpu", 1) == "cpu"


def test_the_command_line_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve-ray", "--replicas", "2", "--num-gpus", "0.5", "--address", "auto"])
    assert args.command == "serve-ray" and args.address == "auto"
    assert replica_options(args) == ReplicaOptions(replicas=2, num_gpus=0.5)
    args = parser.parse_args(
        ["serve-ray", "--min-replicas", "1", "--max-replicas", "3", "--target-ongoing-requests", "4"]
    )
    assert replica_options(args) == ReplicaOptions(min_replicas=1, max_replicas=3, target_ongoing_requests=4)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-ray", "--replicas", "2", "--max-replicas", "3"])


def test_the_variables_replicas_and_the_proxy_get(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", "/cache/hf")
    monkeypatch.setenv("MODEL_PATH", "/models/x")  # a setting: it travels inside the Settings values
    env = replica_environment()
    assert env["HF_HOME"] == "/cache/hf" and "MODEL_PATH" not in env
    assert env[PROXY_CALLBACK_VARIABLE] == PROXY_CALLBACK


def test_serve_run_builder_reads_args_and_leaves_settings_to_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "cuda")
    monkeypatch.setenv("MAX_CONCURRENT_REQUESTS", "7")
    deployment = _deployment(app_builder({"replicas": "2"}))  # `serve run ... replicas=2` passes strings
    assert deployment.num_replicas == 2
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert deployment.max_ongoing_requests == 7
    assert deployment.init_args == (None,)  # each replica reads its own environment
    assert _deployment(ray_serve.app).num_replicas == 1  # `serve run embedding_api.scale.ray_serve:app`
    with pytest.raises(ValidationError):
        app_builder({"replica": 2})


def test_the_proxy_bounds_every_request_past_the_replicas_own_timeout() -> None:
    from embedding_api.settings import Settings

    settings = Settings(_env_file=None, host="127.0.0.1", port=7001, request_timeout=60)
    # a replica answers its own 504 at 60 s; the proxy ends a request stranded on a lost replica 5 s later
    assert proxy_http_options(settings) == {"host": "127.0.0.1", "port": 7001, "request_timeout_s": 65.0}
