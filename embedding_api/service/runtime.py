"""What the app holds while it runs: the served models (each loading, ready or failed, with its own engine and
service), the media client and the server-wide admission."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from embedding_api.catalog import CatalogError, ModelSpec, model_specs
from embedding_api.engine.batcher import Budget, Engine, EngineObserver
from embedding_api.engine.memory import keep_freed_memory_for_reuse
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.device import cpu_thread_setup, cuda_available
from embedding_api.families.loader import ModelUnavailable, has_random_weights, load_family
from embedding_api.items import Item
from embedding_api.media.decode import MediaLimits
from embedding_api.media.fetch import FetchLimits, MediaFetcher, media_client
from embedding_api.media.resolve import MediaResolver
from embedding_api.service.admission import Admission
from embedding_api.service.embeddings import EmbeddingService
from embedding_api.service.options import DefaultsError, ServerDefaults
from embedding_api.service.quantize import CALIBRATION_TEXTS, Calibration, CalibrationError, from_file, from_pooled
from embedding_api.service.rerank import RerankService
from embedding_api.settings import Settings

log = logging.getLogger(__name__)
Result = TypeVar("Result")

FamilyLoader = Callable[[Settings, ModelSpec], EmbeddingFamily]
UNHEALTHY_AFTER_FAILURES = 3
CPU_BATCH_PIXELS = 8 * 512 * 512
CPU_BATCH_TOKENS = 2048  # real tokens: the CPU runs padding-free batches
GPU_BATCH_TOKENS = 16384
GPU_BATCH_PIXELS = 64 * 512 * 512
CANARY_TIMEOUT_S = 10.0
# What an input or a request may ask of a model, and the family attribute that says whether it can.
CAPABILITIES = ("text", "image", "video", "fused", "instruction", "dimensions")


@dataclass
class ServedModel:
    """One model of the catalog: its state while loading, then its family, engine and service."""

    spec: ModelSpec
    status: str = "loading"
    detail: str | None = None
    random_weights: bool = False
    family: EmbeddingFamily | None = None
    engine: Engine | None = None
    service: EmbeddingService | None = None
    reranker: RerankService | None = None  # a reranker model has this instead of `service`

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ready(self) -> bool:
        return self.status == "ok" and (self.service is not None or self.reranker is not None)

    def can(self, capability: str) -> bool:
        family = self.family
        if family is None:
            return False
        if capability in ("embed", "rerank"):
            return family.task == capability
        if capability == "instruction":
            return family.takes_instructions
        if capability == "dimensions":
            return family.matryoshka
        return capability in family.modalities


@dataclass
class Runtime:
    settings: Settings
    loader: FamilyLoader = load_family
    on_fatal: Callable[[str], None] | None = None
    engine_observer: EngineObserver | None = None  # metrics hooks (batches, queued items)
    on_media_fetched: Callable[[str, float, int], None] | None = None  # metrics hook (kind, seconds, bytes)
    draining: bool = False  # set on SIGTERM: new requests get 503 while in-flight ones finish
    models: list[ServedModel] = field(default_factory=list)
    client: httpx.AsyncClient | None = None
    catalog_error: str | None = None
    # The tasks of the HTTP requests in progress, and whether SHUTDOWN_TIMEOUT ran out (see expire_requests).
    requests: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    shutdown_expired: bool = False
    _load_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_concurrent_requests)
        try:
            self.models = [ServedModel(spec) for spec in model_specs(self.settings)]
        except CatalogError as exc:
            self.catalog_error = str(exc)

    def expire_requests(self) -> None:
        """SHUTDOWN_TIMEOUT is running out: cancel the requests still in progress (each is answered 503)."""
        self.shutdown_expired = True
        if self.requests:
            log.warning(
                "SHUTDOWN_TIMEOUT is running out: answering 503 to %d request(s) still running", len(self.requests)
            )
        for task in list(self.requests):
            task.cancel()

    # ---- state of the whole server ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """error if any model failed, ok when every model is ready, else loading."""
        if self.catalog_error is not None or any(model.status == "error" for model in self.models):
            return "error"
        return "ok" if self.models and all(model.ready for model in self.models) else "loading"

    @property
    def detail(self) -> str | None:
        if self.catalog_error is not None:
            return self.catalog_error
        return next((model.detail for model in self.models if model.detail), None)

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    @property
    def first(self) -> ServedModel | None:
        """The model that answers requests naming none."""
        return self.models[0] if self.models else None

    @property
    def family(self) -> EmbeddingFamily | None:
        return self.first.family if self.first else None

    @property
    def engine(self) -> Engine | None:
        return self.first.engine if self.first else None

    @property
    def service(self) -> EmbeddingService | None:
        return self.first.service if self.first else None

    @property
    def cuda_available(self) -> bool:
        return cuda_available()

    @property
    def random_weights(self) -> bool:
        return any(model.random_weights for model in self.models)

    @property
    def random_weights_note(self) -> str | None:
        marked = [model for model in self.models if model.random_weights]
        if not marked:
            return None
        where = ", ".join(_path_setting(self.settings, model.spec) for model in marked)
        return (
            f"{where} {'holds' if len(marked) == 1 else 'hold'} RANDOM weights (a test checkpoint built by "
            f"devtools): its vectors are meaningless, though served as "
            f"{', '.join(repr(model.name) for model in marked)}"
        )

    # ---- which model answers ---------------------------------------------------------------------------------

    def served(self, name: str | None) -> ServedModel:
        """The model a request names (None: the first); 404 naming the served models when unknown."""
        if not self.models:
            raise ApiError(ErrorKind.NOT_READY, f"no model is served: {self.detail}", code="model_unavailable")
        if name is None:
            return self.models[0]
        for model in self.models:
            if model.name == name:
                return model
        names = ", ".join(repr(model.name) for model in self.models)
        raise ApiError(
            ErrorKind.MODEL_NOT_FOUND,
            f"{name!r} is not served here; this server serves {names}",
            param="model",
            code="model_not_found",
        )

    def _ready_model(self, name: str | None) -> ServedModel:
        """The named model once ready, or the 503 that says why not (shutting down, loading, failed)."""
        if self.draining:
            raise ApiError(ErrorKind.SHUTTING_DOWN, "the server is shutting down; retry on another instance")
        model = self.served(name)
        if model.status == "error" or (self.catalog_error is not None):
            raise ApiError(ErrorKind.NOT_READY, f"the model failed to load: {self.detail}", code="model_unavailable")
        if not model.ready:
            raise ApiError(ErrorKind.NOT_READY, "the model is still loading; retry shortly", code="model_loading")
        return model

    def _wrong_task(self, model: ServedModel, task: str) -> ApiError:
        able = ", ".join(self.able(frozenset({task}))) or "none"
        what = "embeds and does not rerank" if task == "rerank" else "is a reranker and does not embed"
        return ApiError(
            ErrorKind.INVALID_REQUEST,
            f"model {model.name!r} {what}; served models that {task}: {able}",
            param="model",
            code="wrong_model_task",
        )

    def service_for(self, name: str | None) -> EmbeddingService:
        """The named (or first embedding) model's embedding service."""
        if name is None:
            name = next((m.name for m in self.models if m.can("embed")), None)
        model = self._ready_model(name)
        if model.service is None:
            raise self._wrong_task(model, "embed")
        return model.service

    def reranker_for(self, name: str | None) -> RerankService:
        """The named (or first) reranker's service."""
        if name is None:
            name = next((m.name for m in self.models if m.can("rerank")), None)
            if name is None and all(m.ready for m in self.models):
                raise ApiError(
                    ErrorKind.INVALID_REQUEST,
                    "no reranker is served here; add one to MODELS (e.g. Qwen3-VL-Reranker-2B)",
                    param="model",
                    code="wrong_model_task",
                )
        model = self._ready_model(name)
        if model.reranker is None:
            raise self._wrong_task(model, "rerank")
        return model.reranker

    def name_for(self, capability: str, setting: str | None) -> str | None:
        """The model a fixed-purpose route uses: the one its setting names, else the first able to."""
        if setting:
            return setting
        able = [model.name for model in self.models if model.can(capability) and model.can("embed")]
        if able:
            return able[0]
        return None if any(not model.ready for model in self.models) else self.models[0].name

    def able(self, capabilities: frozenset[str]) -> list[str]:
        """Served models that can do all of these (for the 400 that says which can)."""
        return [model.name for model in self.models if all(model.can(each) for each in capabilities)]

    # ---- lifecycle ---------------------------------------------------------------------------------------------

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
        """Open the HTTP client and load the models in the background, so /health can answer 503 meanwhile."""
        keep_freed_memory_for_reuse()
        self.client = media_client(FetchLimits.from_settings(self.settings))
        if self.catalog_error is not None:
            self._fail(self.catalog_error)
            return
        for model in self.models:
            model.random_weights = has_random_weights(model.spec.path)
        if self.random_weights:
            log.warning("!!! %s !!!", self.random_weights_note)
        self._load_task = asyncio.get_running_loop().create_task(self._load_all())

    async def _load_all(self) -> None:
        for model in self.models:  # one at a time: loading is bound by disk and memory, not worth overlapping
            await self._load(model)
            if model.status == "error":
                return
        # What is loaded now (models, tokenizers: ~450k objects) lives as long as the server; hidden from the
        # collector, a full collection no longer walks it all, stopping every thread (queries included) for up to
        # a second while a 2,048-text request churns through. Undone in `stop`.
        gc.freeze()

    async def _load(self, model: ServedModel) -> None:
        settings, spec = self.settings, model.spec
        where = _path_setting(settings, spec)
        try:
            family = await _in_passing_thread(self.loader, settings, spec)
        except ModelUnavailable as exc:
            self._fail(str(exc), model)
            return
        except Exception as exc:  # a corrupt checkpoint or a wrong DEVICE: say it in one line
            self._fail(f"loading the model from {where} failed: {exc}", model)
            return
        dimension = spec.embedding_dimension or (settings.embedding_dimension if family.matryoshka else None)
        try:
            defaults = ServerDefaults.checked(
                family.dimension,
                dimension,
                spec.path,
                kind=family.kind,
                takes_instructions=family.takes_instructions,
                input_types=spec.input_types,
            )
        except DefaultsError as exc:
            self._fail(str(exc), model)
            return
        # On a CPU more than ~8 large images, or ~2,048 real tokens, per pass only adds latency (bench/vs_vllm.py,
        # docs/benchmarks.md); a GPU wants much bigger passes.
        on_gpu = family.device.startswith("cuda")
        budget = Budget(
            spec.max_batch_tokens or settings.max_batch_tokens or (GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS),
            spec.max_batch_pixels or settings.max_batch_pixels or (GPU_BATCH_PIXELS if on_gpu else CPU_BATCH_PIXELS),
            spec.max_batch_size or settings.max_batch_size,
        )
        engine = Engine(
            family,
            budget,
            max_queued_items=settings.max_queued_items,
            observer=self.engine_observer,
            bulk_max_wait=settings.bulk_max_wait_ms / 1000,
            cpu_thread_setup=cpu_thread_setup(family.device),
        )
        engine.start()
        assert self.client is not None
        resolver = MediaResolver(self.fetcher(), self.media_limits(family), on_fetched=self.on_media_fetched)
        service: EmbeddingService | None = None
        reranker: RerankService | None = None
        if family.task == "rerank":
            reranker = RerankService(settings, engine, resolver, name=spec.name)
        else:
            service = EmbeddingService(settings, engine, resolver, defaults, name=spec.name, able=self.able)
        try:
            await engine.embed(await engine.prepare([_canary("warm up", family)]))
        except Exception as exc:  # a device fault or out-of-memory on the first forward pass
            await engine.stop()
            self._fail(f"warming up the model from {where} on {family.device} failed: {exc}", model)
            return
        if service is not None:
            try:
                service.calibration = await self._calibration(spec, family, engine, defaults)
            except CalibrationError as exc:
                await engine.stop()
                self._fail(f"model {spec.name!r}: {exc}", model)
                return
            except Exception as exc:  # the built-in set failed to embed (device fault, out of memory)
                await engine.stop()
                self._fail(f"calibrating the model from {where} for int8/uint8 failed: {exc}", model)
                return
        model.family, model.engine, model.service, model.reranker = family, engine, service, reranker
        model.status = "ok"
        log.info("ready: serving %s (%s) on %s", spec.name, family.kind, family.device)

    async def _calibration(
        self, spec: ModelSpec, family: EmbeddingFamily, engine: Engine, defaults: ServerDefaults
    ) -> Calibration | None:
        """A model's int8/uint8 ranges: its calibration file (else QUANTIZATION_CALIBRATION), else the built-in texts
        embedded now, as documents and (where the model has a query instruction) as queries; None when off."""
        path = spec.calibration or self.settings.quantization_calibration
        if path:
            return await asyncio.to_thread(from_file, path, family.dimension, family.finish)
        if not self.settings.builtin_calibration or "text" not in family.modalities:
            return None
        items = [Item(texts=[text]) for text in CALIBRATION_TEXTS]
        query = defaults.presets.get("query")
        if query:
            items += [Item(texts=[text], instruction=query) for text in CALIBRATION_TEXTS]
        chunk = max(1, self.settings.max_queued_items)  # never more than the queue takes at once
        pooled = []
        for start in range(0, len(items), chunk):
            pooled.append((await engine.embed(await engine.prepare(items[start : start + chunk]))).pooled)
        return from_pooled(np.concatenate(pooled), family.finish)

    async def engine_is_healthy(self) -> bool:
        """After repeated engine faults, a canary embedding decides; green health while every request fails is a lie."""
        for model in self.models:
            engine = model.engine
            if engine is None or engine.consecutive_failures < UNHEALTHY_AFTER_FAILURES:
                continue
            try:
                async with asyncio.timeout(CANARY_TIMEOUT_S):
                    await engine.embed(await engine.prepare([_canary("health check", engine.family)]))
            except Exception:
                return False
        return True

    def _fail(self, message: str, model: ServedModel | None = None) -> None:
        if model is not None:
            model.status, model.detail = "error", message
        log.error(message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        for model in self.models:
            if model.engine is not None:
                await model.engine.stop()
        if self.client is not None:
            await self.client.aclose()
        gc.unfreeze()  # what this runtime held may be collected again


def _canary(text: str, family: EmbeddingFamily) -> Item:
    """A tiny input the model can take: a text, or a text pair for a reranker."""
    return Item(texts=[text], document=Item(texts=[text]) if family.task == "rerank" else None)


def _path_setting(settings: Settings, spec: ModelSpec) -> str:
    """How the operator named this model's weights: MODEL_PATH=... alone, else the model's name and path."""
    if len(settings.models.strip()) == 0 and not settings.models_config:
        return f"MODEL_PATH={spec.path}"
    return f"model {spec.name!r} ({spec.path})"


async def _in_passing_thread(function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` on a thread that ends with it. Loading computes in parallel on the CPU, and the OpenMP team
    a thread starts lives as long as the thread: an idle pool thread's team would cut the device thread's team's
    spin-wait for good (`families.device.serial_cpu_thread`)."""
    outcome: concurrent.futures.Future[Result] = concurrent.futures.Future()

    def work() -> None:
        if not outcome.set_running_or_notify_cancel():  # once running, a stop no longer cancels it: it just ends
            return
        try:
            outcome.set_result(function(*args))
        except BaseException as exc:  # handed to the awaiting coroutine as it is
            outcome.set_exception(exc)

    threading.Thread(target=work, name="model-load", daemon=True).start()
    return await asyncio.wrap_future(outcome)
