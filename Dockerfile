# embedding_api on a GPU: `docker compose up --build` (see README, "Docker").
#
# Base image: plain Python rather than nvidia/cuda. The torch wheel pinned in requirements.txt (PyPI, Linux x86_64)
# brings its own CUDA 13 runtime libraries (the nvidia-* wheels), so a CUDA base image would only add a second,
# unused copy of them (gigabytes). What the container needs from the host is the driver: an NVIDIA driver recent
# enough for CUDA 13 and the NVIDIA Container Toolkit, which mounts it in. Without a GPU the same image runs on the
# CPU (DEVICE=auto).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# Dependencies first, in their own layer: code changes do not reinstall torch.
# WITH_RAY=1 adds Ray Serve and Ray Data (requirements-ray.txt) for `serve-ray`, `batch --ray` and KubeRay
# (deploy/rayservice.yaml): `docker build --build-arg WITH_RAY=1 -t embedding-api:ray .`
ARG WITH_RAY=0
# g++ builds the CPU kernels (families/cpu_kernels.cpp) when the image runs on a CPU; on a GPU it is unused.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt requirements-ray.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && if [ "$WITH_RAY" = "1" ]; then pip install --no-cache-dir -r requirements-ray.txt; fi

COPY embedding_api/ embedding_api/

# A non-root user, named by number so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin app
USER 10001:10001
# The kernels, built once here for this build machine's vector width (a host with another width builds its own at start).
RUN python -c "from embedding_api.families import cpu_kernels; assert cpu_kernels.library() is not None"

# The weights are not in the image: mount them on /app/models (docker-compose.yml mounts ./models read-only).
ENV MODEL_PATH=/app/models/Qwen3-VL-Embedding-2B \
    HOST=0.0.0.0 \
    PORT=6008
EXPOSE 6008

# /health answers 503 until the model is loaded and warmed up; urlopen raises on it (curl is not in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '6008') + '/health', timeout=4)"]

CMD ["python", "-m", "embedding_api"]
