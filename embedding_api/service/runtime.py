"""What the app holds while it runs: the loading state, the engine and the embeddings service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from embedding_api.engine.batcher import Budget, Engine, EngineObserver
from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.device import cuda_available
from embedding_api.families.loader import ModelUnavailable, has_random_weights, load_family
from embedding_api.items import Item
from embedding_api.media.fetch import FetchLimits, MediaFetcher, media_client
from embedding_api.media.decode import MediaLimits
from embedding_api.media.resolve import MediaResolver
from embedding_api.service.embeddings import EmbeddingService
from embedding_api.service.options import DefaultsError, ServerDefaults
from embedding_api.settings import Settings

log = logging.getLogger(__name__)

FamilyLoader = Callable[[Settings], EmbeddingFamily]
UNHEALTHY_AFTER_FAILURES = 3
CPU_BATCH_PIXELS = 8 * 512 * 512
CPU_BATCH_TOKENS = 2048  # real tokens: the CPU runs padding-free batches
GPU_BATCH_TOKENS = 16384
GPU_BATCH_PIXELS = 64 * 512 * 512
CANARY_TIMEOUT_S = 10.0


@dataclass
class Runtime:
    settings: Settings
    loader: FamilyLoader = load_family
    on_fatal: Callable[[str], None] | None = None
    engine_observer: EngineObserver | None = None  # metrics hooks (batches, queued items)
    on_media_fetched: Callable[[str, float, int], None] | None = None  # metrics hook (kind, seconds, bytes)
    status: str = "loading"
    draining: bool = False  # set on SIGTERM: new requests get 503 while in-flight ones finish
    detail: str | None = None
    random_weights: bool = False  # MODEL_PATH is a checkpoint built by devtools.tiny_checkpoint (the demo)
    family: EmbeddingFamily | None = None
    engine: Engine | None = None
    service: EmbeddingService | None = None
    client: httpx.AsyncClient | None = None
    # The tasks of the HTTP requests in progress, and whether SHUTDOWN_TIMEOUT ran out (see expire_requests).
    requests: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    shutdown_expired: bool = False
    _load_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def expire_requests(self) -> None:
        """SHUTDOWN_TIMEOUT is running out: cancel the requests still in progress (each is answered 503)."""
        self.shutdown_expired = True
        if self.requests:
            log.warning(
                "SHUTDOWN_TIMEOUT is running out: answering 503 to %d request(s) still running", len(self.requests)
            )
        for task in list(self.requests):
            task.cancel()

    @property
    def cuda_available(self) -> bool:
        return cuda_available()

    @property
    def ready(self) -> bool:
        return self.status == "ok" and self.service is not None

    def media_limits(self, family: EmbeddingFamily) -> MediaLimits:
        return MediaLimits(
            max_image_pixels=self.settings.max_image_pixels,
            max_request_pixels=self.settings.max_request_pixels,
            frames=family.frame_picker,  # media fetches and decodes only the frames the model will see
        )

    def fetcher(self) -> MediaFetcher:
        assert self.client is not None
        limits = FetchLimits.from_settings(self.settings)
        return MediaFetcher(self.client, limits)

    async def start(self) -> None:
        """Open the HTTP client and load the model in the background, so /health can answer 503 meanwhile."""
        self.client = media_client(FetchLimits.from_settings(self.settings))
        self.random_weights = has_random_weights(self.settings.model_path)
        if self.random_weights:
            log.warning("!!! %s !!!", self.random_weights_note)
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    @property
    def random_weights_note(self) -> str | None:
        if not self.random_weights:
            return None
        return (
            f"MODEL_PATH={self.settings.model_path} holds RANDOM weights (a test checkpoint built by "
            f"devtools.tiny_checkpoint): its vectors are meaningless, though served as {self.settings.model_name!r}"
        )

    async def _load(self) -> None:
        settings = self.settings
        try:
            family = await asyncio.to_thread(self.loader, settings)
        except ModelUnavailable as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # a corrupt checkpoint or a wrong DEVICE: say it in one line
            self._fail(f"loading the model from MODEL_PATH={settings.model_path} failed: {exc}")
            return
        try:
            defaults = ServerDefaults.checked(family.dimension, settings.embedding_dimension, settings.model_path)
        except DefaultsError as exc:
            self._fail(str(exc))
            return
        # On a CPU more than ~8 large images, or ~2,048 real tokens, per pass only adds latency (bench/vs_vllm.py,
        # docs/benchmarks.md); a GPU wants much bigger passes.
        on_gpu = family.device.startswith("cuda")
        auto_tokens = GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS
        auto_pixels = GPU_BATCH_PIXELS if on_gpu else CPU_BATCH_PIXELS
        budget = Budget(
            settings.max_batch_tokens or auto_tokens, settings.max_batch_pixels or auto_pixels, settings.max_batch_size
        )
        engine = Engine(family, budget, max_queued_items=settings.max_queued_items, observer=self.engine_observer)
        engine.start()
        assert self.client is not None
        resolver = MediaResolver(self.fetcher(), self.media_limits(family), on_fetched=self.on_media_fetched)
        service = EmbeddingService(settings, engine, resolver, defaults)
        try:
            await engine.embed(await engine.prepare([Item(texts=["warm up"])]))
        except Exception as exc:  # a device fault or out-of-memory on the first forward pass
            await engine.stop()
            self._fail(f"warming up the model from MODEL_PATH={settings.model_path} on {family.device} failed: {exc}")
            return
        self.family, self.engine, self.service = family, engine, service
        self.status = "ok"
        log.info("ready: serving %s on %s", settings.model_name, family.device)

    async def engine_is_healthy(self) -> bool:
        """After repeated engine faults, a canary embedding decides; green health while every request fails is a lie."""
        engine = self.engine
        if engine is None or engine.consecutive_failures < UNHEALTHY_AFTER_FAILURES:
            return True
        try:
            async with asyncio.timeout(CANARY_TIMEOUT_S):
                await engine.embed(await engine.prepare([Item(texts=["health check"])]))
        except Exception:
            return False
        return True

    def _fail(self, message: str) -> None:
        self.status = "error"
        self.detail = message
        log.error(message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.engine is not None:
            await self.engine.stop()
        if self.client is not None:
            await self.client.aclose()
