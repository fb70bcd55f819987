"""deploy/rayservice.yaml against the code and the Dockerfile: a KubeRay RayService whose import path, arguments,
env names, port, image build argument, GPU requests and Ray version are the ones this repository has."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest

from embedding_api.environment import PROCESS_VARIABLES
from embedding_api.scale.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from embedding_api.scale.ray_serve import APP_NAME, ReplicaOptions
from embedding_api.settings import Settings
from tests.support.paths import REPO_ROOT

yaml = pytest.importorskip("yaml")

MANIFEST = REPO_ROOT / "deploy" / "rayservice.yaml"
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    document = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(document, dict)
    return document


def _serve_config(service: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(service["spec"]["serveConfigV2"])  # a YAML document inside the manifest
    assert isinstance(config, dict)
    return config


def _containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def test_a_rayservice(service: dict[str, Any]) -> None:
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert service["metadata"]["name"]


def test_the_import_path_and_its_arguments_are_ours(service: dict[str, Any]) -> None:
    (application,) = _serve_config(service)["applications"]
    assert application["name"] == APP_NAME and application["route_prefix"] == "/"
    module_name, attribute = application["import_path"].split(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert callable(builder)
    options = ReplicaOptions.model_validate(application["args"])  # every argument is one app_builder takes
    assert options.num_gpus and options.num_gpus >= 1


def test_the_port_is_ours_everywhere(service: dict[str, Any]) -> None:
    port = Settings.model_fields["port"].default
    assert _serve_config(service)["http_options"]["port"] == port
    assert f"EXPOSE {port}" in DOCKERFILE
    for container in _containers(service):
        serve_ports = [p["containerPort"] for p in container["ports"] if p["name"] == "serve"]
        assert serve_ports == [port], container["name"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["PORT"] == str(port)


def test_env_names_are_settings_or_process_variables(service: dict[str, Any]) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for container in _containers(service):
        env = {item["name"]: item for item in container["env"]}
        unknown = set(env) - settings - PROCESS_VARIABLES - {PROXY_CALLBACK_VARIABLE}
        assert unknown == set(), container["name"]
        assert env[PROXY_CALLBACK_VARIABLE]["value"] == PROXY_CALLBACK
        assert f"MODEL_PATH={env['MODEL_PATH']['value']}" in DOCKERFILE  # where the image expects the weights
        assert env["DEVICE"]["value"] == "cuda"
        assert "secretKeyRef" in env["API_KEY"]["valueFrom"]  # never a key in the manifest


def test_the_image_is_our_dockerfile_built_with_ray(service: dict[str, Any]) -> None:
    images = {container["image"] for container in _containers(service)}
    assert len(images) == 1
    (image,) = images
    assert re.search(r"^ARG WITH_RAY=0$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(
        r'if \[ "\$WITH_RAY" = "1" \]; then pip install --no-cache-dir -r requirements-ray.txt', DOCKERFILE
    )
    assert f"--build-arg WITH_RAY=1 -t {image} ." in MANIFEST.read_text()  # the build command it documents
    assert "!requirements-ray.txt" in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    user = re.findall(r"^USER\s+(\d+)", DOCKERFILE, flags=re.MULTILINE)[-1]
    for group in (
        service["spec"]["rayClusterConfig"]["headGroupSpec"],
        *service["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ):
        assert str(group["template"]["spec"]["securityContext"]["runAsUser"]) == user


def test_gpu_workers_and_the_ray_version(service: dict[str, Any]) -> None:
    cluster = service["spec"]["rayClusterConfig"]
    (application,) = _serve_config(service)["applications"]
    per_replica = ReplicaOptions.model_validate(application["args"]).num_gpus
    (group,) = cluster["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus >= (per_replica or 0) and str(gpus) == group["rayStartParams"]["num-gpus"]
    assert group["maxReplicas"] * gpus >= application["args"]["max_replicas"] * (per_replica or 0)
    pin = re.search(r"^ray\[[a-z,]+\]==(\S+)$", (REPO_ROOT / "requirements-ray.txt").read_text(), flags=re.MULTILINE)
    assert pin is not None and cluster["rayVersion"] == pin.group(1)


def test_probes_need_no_wget(service: dict[str, Any]) -> None:
    """KubeRay's default probes call wget, which python:3.11-slim lacks: ours are set, and use Python."""
    for container in _containers(service):
        for probe in ("livenessProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[0] == "python" and "wget" not in " ".join(command)
