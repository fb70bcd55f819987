"""Prometheus metrics: one registry per app, the request and engine series, and the live gauges."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from embedding_api.families.base import PreparedItem
from embedding_api.items import DEFAULT_PRIORITY, Priority
from embedding_api.observability.logs import (
    RequestRecord,
    current_request,
)

log = logging.getLogger(__name__)

PREFIX = "embedding_api"
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "unmatched"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimension: int
    device: str
    dtype: str
    family: str = ""
    queued: int = 0  # its items waiting for the device


class _LiveState(Collector):
    """Read at scrape time: the queue depth (by priority) and the served model (once loaded)."""

    def __init__(
        self, queue_depth: Callable[[], Mapping[Priority, int]], model_info: Callable[[], list[ModelInfo]]
    ) -> None:
        self._queue_depth = queue_depth
        self._model_info = model_info

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Items waiting for the device, by priority.", labels=["priority"]
        )
        for priority, count in self._queue_depth().items():
            depth.add_metric([priority], count)
        yield depth
        info = GaugeMetricFamily(
            f"{PREFIX}_model_info",
            "Each served model, once loaded (value 1).",
            labels=["name", "dimension", "device", "dtype", "family"],
        )
        per_model = GaugeMetricFamily(
            f"{PREFIX}_model_queue_depth", "Items waiting for the device, by model.", labels=["model"]
        )
        for model in self._model_info():
            info.add_metric([model.name, str(model.dimension), model.device, model.dtype, model.family], 1)
            per_model.add_metric([model.name], model.queued)
        yield info
        yield per_model


def modality_of(modalities: tuple[str, ...]) -> str:
    """text, image, video, or fused (an item mixing several)."""
    if len(modalities) == 1:
        return modalities[0]
    return "fused" if modalities else "text"


class Metrics:
    """Every metric family of one app, in that app's own registry."""

    def __init__(
        self,
        queue_depth: Callable[[], Mapping[Priority, int]] = dict,
        model_info: Callable[[], list[ModelInfo]] = list,
    ) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.model_requests = Counter(
            f"{PREFIX}_model_requests",
            "Embedding requests by the model that answered, and status.",
            ["model", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Whole request time by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            f"{PREFIX}_preprocess_seconds",
            "Per request: parsing, media fetch and decode, tokenising (until queued).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            f"{PREFIX}_queue_seconds",
            "Per request: time its items waited for a batch (the longest), by priority.",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            f"{PREFIX}_inference_seconds",
            "Per request: forward-pass time of its batches (the longest).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Items per forward pass.", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens",
            "Tokens per forward pass (unpadded).",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=registry,
        )
        self.items = Counter(
            f"{PREFIX}_items",
            "Embedded items by modality (text, image, video, fused) and priority (interactive, bulk).",
            ["modality", "priority"],
            registry=registry,
        )
        self.fetch_seconds = Histogram(
            f"{PREFIX}_media_fetch_seconds",
            "Time to download one image or video URL.",
            ["media"],
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self.fetch_bytes = Counter(
            f"{PREFIX}_media_fetch_bytes", "Bytes downloaded for image and video URLs.", ["media"], registry=registry
        )
        registry.register(_LiveState(queue_depth, model_info))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- hooks the engine and the media resolver call -----------------------------------------------------

    def items_queued(self, items: list[PreparedItem], priority: Priority) -> None:
        """Engine hook: a request's items reached the queue (runs in that request's context)."""
        record = current_request.get()
        if record is None:  # warm-up and health canaries
            return
        record.queued_at = time.perf_counter()
        record.priority = priority
        record.modalities.update(modality_of(item.modalities) for item in items)

    def batch_run(self, size: int, tokens: int, seconds: float) -> None:
        """Engine hook: one forward pass finished."""
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)

    def media_fetched(self, media: str, seconds: float, size: int) -> None:
        """Media resolver hook: one URL downloaded."""
        self.fetch_seconds.labels(media).observe(seconds)
        self.fetch_bytes.labels(media).inc(size)

    # ---- per request ----------------------------------------------------------------------------------------

    def observe_request(self, record: RequestRecord, seconds: float) -> None:
        self.requests.labels(record.route, record.method, str(record.status)).inc()
        if record.model is not None:
            self.model_requests.labels(record.model, str(record.status)).inc()
        self.request_seconds.labels(record.route).observe(seconds)
        if not 200 <= record.status < 300:
            return
        priority = record.priority or DEFAULT_PRIORITY
        for modality, count in record.modalities.items():
            self.items.labels(modality, priority).inc(count)
        if record.preprocess_ms is not None:
            self.preprocess_seconds.observe(record.preprocess_ms / 1000)
        if record.queue_ms is not None:
            self.queue_seconds.labels(priority).observe(record.queue_ms / 1000)
        if record.inference_ms is not None:
            self.inference_seconds.observe(record.inference_ms / 1000)
