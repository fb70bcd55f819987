"""`embedding_api.service.embeddings.EmbeddingService` alone, over a fake engine and media resolver: `dimensions`,
which model answers (the runtime), admission (MAX_CONCURRENT_REQUESTS), MAX_TOKENS_PER_REQUEST, instructions and the timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.service.admission import Admission
from embedding_api.service.embeddings import EmbeddingService
from embedding_api.service.options import ServerDefaults
from embedding_api.service.runtime import Runtime
from embedding_api.settings import Settings
from tests.fakes import FakeEngine, FakeMediaResolver, ToyFamily

MODEL_DIMENSION = 4


def make_service(
    *, embedding_dimension: int | None = None, delay: float = 0.0, **overrides: Any
) -> tuple[EmbeddingService, FakeEngine, FakeMediaResolver, ToyFamily]:
    values: dict[str, Any] = {"_env_file": None, "model_path": "unused-model", "api_key": "", "device": "cpu"}
    values.update(overrides)
    settings = Settings(**values)
    family = ToyFamily(dimension=MODEL_DIMENSION)
    engine = FakeEngine(family, delay=delay)
    resolver = FakeMediaResolver()
    defaults = ServerDefaults(model_dimension=MODEL_DIMENSION, dimensions=embedding_dimension)
    service = EmbeddingService(settings, engine, resolver, defaults)  # type: ignore[arg-type]
    return service, engine, resolver, family


def refused(coro: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        asyncio.run(coro)
    return caught.value


# ---- dimensions -------------------------------------------------------------------------------------------------


def test_requested_dimensions_reach_finish_and_cut_the_vectors() -> None:
    service, _, _, family = make_service()
    result = asyncio.run(service.embed(["ab"], service.options(dimensions=2)))
    assert family.finished == [(2, True)]
    # ToyFamily pools "ab" to (1, 2, 3, 4) x 3; cut to (3, 6) and normalised: (1, 2) / sqrt(5).
    np.testing.assert_allclose(result.vectors, np.array([[1, 2]], dtype=np.float32) / np.sqrt(5), atol=1e-6)


def test_no_dimensions_means_the_full_size() -> None:
    service, _, _, family = make_service()
    result = asyncio.run(service.embed(["ab"], service.options()))
    assert family.finished == [(None, True)]
    np.testing.assert_allclose(result.vectors, np.array([[1, 2, 3, 4]], dtype=np.float32) / np.sqrt(30), atol=1e-6)


def test_the_models_own_size_is_the_full_size() -> None:
    service, _, _, _ = make_service()
    assert service.options(dimensions=4).dimensions is None


def test_embedding_dimension_is_the_default_and_a_request_overrides_it() -> None:
    service, _, _, _ = make_service(embedding_dimension=3)
    assert service.options().dimensions == 3
    assert service.options(dimensions=1).dimensions == 1
    assert service.options(dimensions=4).dimensions is None


@pytest.mark.parametrize("size", [0, -1, 5, 1024])
def test_dimensions_outside_one_to_the_models_size_are_refused(size: int) -> None:
    service, engine, _, _ = make_service()
    with pytest.raises(ApiError) as caught:
        service.options(dimensions=size)
    error = caught.value
    assert (error.kind, error.status, error.param) == (ErrorKind.INVALID_REQUEST, 400, "dimensions")
    assert "between 1 and 4" in str(error) and str(size) in str(error)
    assert engine.prepared == []


def test_normalize_false_reaches_finish() -> None:
    service, _, _, family = make_service()
    result = asyncio.run(service.embed(["ab"], service.options(normalize=False)))
    assert family.finished == [(None, False)]
    np.testing.assert_array_equal(result.vectors, np.array([[3, 6, 9, 12]], dtype=np.float32))


# ---- the model check ----------------------------------------------------------------------------------------------


def test_another_model_is_404_naming_the_served_ones() -> None:
    runtime = Runtime(Settings(_env_file=None, models="served-model=unused,other=unused2", api_key=""))
    with pytest.raises(ApiError) as caught:
        runtime.served("text-embedding-3-small")
    error = caught.value
    assert (error.kind, error.status, error.param, error.code) == (
        ErrorKind.MODEL_NOT_FOUND,
        404,
        "model",
        "model_not_found",
    )
    assert str(error) == (
        "model: 'text-embedding-3-small' is not served here; this server serves 'served-model', 'other'"
    )


@pytest.mark.parametrize(
    ("model", "expected"), [(None, "served-model"), ("served-model", "served-model"), ("other", "other")]
)
def test_no_model_is_the_first_and_a_named_one_is_itself(model: str | None, expected: str) -> None:
    runtime = Runtime(Settings(_env_file=None, models="served-model=unused,other=unused2", api_key=""))
    assert runtime.served(model).name == expected


def test_the_model_name_is_case_sensitive() -> None:
    runtime = Runtime(Settings(_env_file=None, models="served-model=unused", api_key=""))
    with pytest.raises(ApiError) as caught:
        runtime.served("Served-Model")
    assert caught.value.kind is ErrorKind.MODEL_NOT_FOUND


# ---- admission --------------------------------------------------------------------------------------------------


def test_admission_refuses_past_max_concurrent_requests() -> None:
    admission = Admission(2)
    with admission.admit(), admission.admit():
        assert admission.in_progress == 2
        with pytest.raises(ApiError) as caught, admission.admit():
            pass
        assert (caught.value.kind, caught.value.status) == (ErrorKind.OVERLOADED, 429)
        assert admission.in_progress == 2  # the refused one took no slot
    assert admission.in_progress == 0
    with admission.admit():
        assert admission.in_progress == 1


def test_admission_frees_its_slot_when_the_request_fails() -> None:
    admission = Admission(1)
    with pytest.raises(RuntimeError), admission.admit():
        raise RuntimeError("the request failed")
    assert admission.in_progress == 0
    with admission.admit():
        assert admission.in_progress == 1


# ---- MAX_TOKENS_PER_REQUEST ---------------------------------------------------------------------------------------


def test_a_request_at_max_tokens_per_request_is_embedded() -> None:
    service, engine, _, _ = make_service(max_tokens_per_request=10)
    result = asyncio.run(service.embed(["aaaaa", "bbbbb"], service.options()))  # ToyFamily: 5 + 5 tokens
    assert result.tokens == 10
    assert len(engine.embedded) == 1


def test_a_request_over_max_tokens_per_request_is_refused_before_the_engine_runs() -> None:
    service, engine, _, _ = make_service(max_tokens_per_request=10)
    error = refused(service.embed(["aaaaa", "bbbbbb"], service.options()))  # 5 + 6 tokens
    assert (error.kind, error.status, error.param) == (ErrorKind.INVALID_REQUEST, 400, "input")
    assert "11 tokens" in str(error) and "MAX_TOKENS_PER_REQUEST=10" in str(error)
    assert len(engine.prepared) == 1 and engine.embedded == []


# ---- what the engine gets, and what comes back ------------------------------------------------------------------


def test_an_items_error_is_named_by_its_input_index() -> None:
    service, engine, _, _ = make_service()
    failure = ApiError(ErrorKind.ITEM_TOO_LARGE, "too large")
    failure.item_index = 2
    engine.prepare_error = failure
    error = refused(service.embed(["a", "b", "c"], service.options()))
    assert error is failure
    assert error.param == "input[2]"


def test_the_request_instruction_applies_to_items_without_their_own() -> None:
    service, engine, _, _ = make_service()
    raw = ["plain", {"content": [{"type": "text", "text": "own"}], "instruction": "Own instruction."}]
    asyncio.run(service.embed(raw, service.options(instruction="Request instruction.", truncate=False)))
    [items] = engine.prepared
    assert [item.instruction for item in items] == ["Request instruction.", "Own instruction."]
    assert [item.truncate for item in items] == [False, False]


def test_tokens_and_timings_come_from_the_engine() -> None:
    service, _, _, _ = make_service()
    result = asyncio.run(service.embed(["abc", "de"], service.options()))
    assert (result.tokens, result.queue_ms, result.inference_ms) == (5, 1.5, 2.5)


def test_request_timeout_is_a_504() -> None:
    service, _, _, _ = make_service(request_timeout=0.05, delay=5.0)
    error = refused(service.embed(["a"], service.options()))
    assert (error.kind, error.status) == (ErrorKind.TIMEOUT, 504)
    assert "REQUEST_TIMEOUT=0.05" in str(error)
