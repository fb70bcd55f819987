"""The embeddings use case: validate, resolve media, batch through the engine, finish the vectors. No HTTP here:
callers get vectors and decide how to write them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedding_api.engine.batcher import Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.base import EmbeddingFamily
from embedding_api.items import DEFAULT_PRIORITY, Priority, blank_is_none, item_instruction
from embedding_api.media.parse import ItemSpec, check_instruction
from embedding_api.media.resolve import MediaResolver
from embedding_api.service.limits import parse_off_loop, run_items, within_request_timeout
from embedding_api.service.options import EmbeddingOptions, ServerDefaults
from embedding_api.service.quantize import NEEDS_RANGES, PRECISIONS, Calibration, quantize
from embedding_api.settings import Settings


@dataclass
class Embeddings:
    """One request's finished vectors, in its order, and what they cost."""

    vectors: np.ndarray
    tokens: int
    queue_ms: float
    inference_ms: float
    compact: dict[str, np.ndarray] = field(default_factory=dict)  # int8, uint8, binary, ubinary: as asked


class EmbeddingService:
    """One served model's embeddings: its engine, its media resolver, its defaults."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        resolver: MediaResolver,
        defaults: ServerDefaults,
        *,
        name: str | None = None,
        able: Callable[[frozenset[str]], list[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.resolver = resolver
        self.defaults = defaults
        self.model_name = name or settings.model_name
        self._able = able  # which served models can do something (for errors that name them)
        self.calibration: Calibration | None = None  # int8/uint8 ranges (set by the runtime once computed)

    @property
    def family(self) -> EmbeddingFamily:
        return self.engine.family

    def options(
        self,
        *,
        dimensions: int | None = None,
        instruction: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        input_type: str | None = None,
        precisions: Sequence[str] = (),
        precisions_param: str = "encoding_format",
        priority: Priority = DEFAULT_PRIORITY,
    ) -> EmbeddingOptions:
        """The request's options over the server's defaults (400 for a `dimensions` the model cannot give, or an
        int8/uint8 this model has no calibration for)."""
        if instruction is not None:
            check_instruction(instruction, self.settings.max_instruction_chars, "instruction")
            if blank_is_none(instruction) and not self.family.takes_instructions:
                raise self._cannot({"instruction"}, "takes no instruction", "instruction")
        if dimensions is not None and not self.family.matryoshka and dimensions != self.family.dimension:
            raise self._cannot({"dimensions"}, "was not trained to be cut (no Matryoshka `dimensions`)", "dimensions")
        unknown = [name for name in precisions if name not in PRECISIONS]
        if unknown:
            message = f"{unknown[0]!r} is not one of {', '.join(PRECISIONS)}"
            raise ApiError(ErrorKind.INVALID_REQUEST, message, param=precisions_param)
        ranged = [name for name in precisions if name in NEEDS_RANGES]
        if ranged and self.calibration is None:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"{ranged[0]} needs calibration ranges and model {self.model_name!r} has none (BUILTIN_CALIBRATION "
                "is off and no calibration file is set); ask for float, base64, binary or ubinary",
                param=precisions_param,
                code="calibration_unavailable",
            )
        return EmbeddingOptions.merged(
            self.defaults,
            dimensions=dimensions,
            instruction=instruction,
            normalize=normalize,
            truncate=truncate,
            input_type=input_type,
            precisions=precisions,
            priority=priority,
        )

    async def embed(self, raw_input: Any, options: EmbeddingOptions) -> Embeddings:
        """One request's `input` (admitted by the caller), bounded by REQUEST_TIMEOUT."""
        return await within_request_timeout(self.settings, self._embed(raw_input, options))

    def _cannot(self, needed: set[str], what: str, param: str) -> ApiError:
        """A 400 for something this model cannot take, naming the served models that can."""
        able = self._able(frozenset(needed | {"embed"})) if self._able else []
        others = [name for name in able if name != self.model_name]
        hint = f"; served models that can: {', '.join(others)}" if others else ""
        return ApiError(
            ErrorKind.UNSUPPORTED_INPUT,
            f"model {self.model_name!r} ({self.family.kind}) {what}{hint}",
            param=param,
            code="unsupported_by_model",
        )

    def _check_capabilities(self, specs: list[ItemSpec]) -> None:
        """Before any media is fetched: each input only holds what this model takes."""
        family = self.family
        for spec in specs:
            wanted = [
                ("image", bool(spec.images), "takes no images"),
                ("video", bool(spec.videos), "takes no videos"),
                ("text", bool(spec.texts), "takes no text"),
                ("fused", spec.part_count > 1, "takes one part per input, not a fused input"),
            ]
            needed = {capability for capability, present, _ in wanted if present}
            for capability, present, what in wanted:
                if present and capability not in family.modalities:
                    raise self._cannot(needed, what, spec.param)
            if spec.instruction is not None and not family.takes_instructions:
                raise self._cannot(needed | {"instruction"}, "takes no instruction", f"{spec.param}.instruction")

    async def _embed(self, raw_input: Any, options: EmbeddingOptions) -> Embeddings:
        settings = self.settings
        specs = await parse_off_loop(raw_input, settings, settings.max_inputs_per_request)
        self._check_capabilities(specs)
        items = await self.resolver.resolve(specs)
        for item in items:
            item.instruction = item_instruction(item.instruction, options.instruction, options.preset)
            item.truncate = options.truncate
        params = [spec.param for spec in specs]
        advice = "split it into several requests"
        result = await run_items(
            self.engine, items, params, settings, param="input", advice=advice, priority=options.priority
        )
        vectors = self.engine.family.finish(result.pooled, options.dimensions, options.normalize)
        return Embeddings(vectors, result.tokens, result.queue_ms, result.inference_ms, self.compact(vectors, options))

    def compact(self, vectors: np.ndarray, options: EmbeddingOptions) -> dict[str, np.ndarray]:
        """The finished vectors in each compact form the options ask for; int8/uint8 against the calibration's
        ranges for vectors finished the same way (same `dimensions`, same normalisation)."""
        compact: dict[str, np.ndarray] = {}
        for precision in options.precisions:
            ranges = None
            if precision in NEEDS_RANGES:
                assert self.calibration is not None  # checked by `options`
                ranges = self.calibration.ranges_for(options.dimensions, options.normalize)
            compact[precision] = quantize(vectors, precision, ranges)
        return compact
