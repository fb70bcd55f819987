"""`embedding_api.service.runtime.Runtime` with a fake loader and a model-less family: loading -> ok, loading ->
error (each way a start can fail), the batch budget it picks, the canary after repeated faults, and stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from embedding_api.engine.batcher import Budget
from embedding_api.families.loader import ModelUnavailable
from embedding_api.service.runtime import Runtime
from embedding_api.settings import Settings
from tests.fakes import GatedLoader, ToyFamily

MODEL_PATH = "/nowhere/toy-model"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"_env_file": None, "model_path": MODEL_PATH, "api_key": "", "device": "cpu"}
    values.update(overrides)
    return Settings(**values)


async def settled(runtime: Runtime, timeout: float = 10.0) -> str:
    """Wait while the runtime is loading; its status after."""
    deadline = time.monotonic() + timeout
    while runtime.status == "loading" and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return runtime.status


def run_runtime(runtime: Runtime, check: Callable[[Runtime], Any] | None = None) -> Runtime:
    """Start, wait for the load to settle, run `check` (sync or async) while started, stop."""

    async def scenario() -> None:
        await runtime.start()
        try:
            await settled(runtime)
            if check is not None:
                outcome = check(runtime)
                if asyncio.iscoroutine(outcome):
                    await outcome
        finally:
            await runtime.stop()

    asyncio.run(scenario())
    return runtime


def test_loading_then_ok() -> None:
    family = ToyFamily()
    gate = GatedLoader(family)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        runtime = Runtime(make_settings(), loader=gate)
        assert runtime.status == "loading" and not runtime.ready
        await runtime.start()
        try:
            assert await asyncio.to_thread(gate.entered.wait, 10)
            seen["while_loading"] = (runtime.status, runtime.ready, runtime.service, runtime.engine, runtime.detail)
            gate.release.set()
            seen["after"] = await settled(runtime)
            seen["ready"] = runtime.ready
            seen["family"] = runtime.family
            seen["service"] = runtime.service
            seen["detail"] = runtime.detail
        finally:
            gate.release.set()
            await runtime.stop()

    asyncio.run(scenario())
    assert seen["while_loading"] == ("loading", False, None, None, None)
    assert seen["after"] == "ok" and seen["ready"] is True
    assert seen["family"] is family and seen["service"] is not None and seen["detail"] is None
    assert family.prepared[0].texts == ["warm up"]  # the warm-up went through the family before "ok"


def test_a_missing_model_is_an_error_with_its_own_message() -> None:
    fatal: list[str] = []

    def loader(*_: object) -> Any:
        raise ModelUnavailable("the model is not on this machine.")

    runtime = run_runtime(Runtime(make_settings(), loader=loader, on_fatal=fatal.append))
    assert (runtime.status, runtime.ready, runtime.detail) == ("error", False, "the model is not on this machine.")
    assert fatal == ["the model is not on this machine."]
    assert runtime.service is None and runtime.engine is None


def test_an_unexpected_load_failure_names_model_path() -> None:
    fatal: list[str] = []

    def loader(*_: object) -> Any:
        raise RuntimeError("corrupt checkpoint")

    runtime = run_runtime(Runtime(make_settings(), loader=loader, on_fatal=fatal.append))
    expected = "loading the model from MODEL_PATH=/nowhere/toy-model failed: corrupt checkpoint"
    assert (runtime.status, runtime.detail) == ("error", expected)
    assert fatal == [expected]


def test_an_embedding_dimension_above_the_models_size_fails_the_start() -> None:
    fatal: list[str] = []
    runtime = run_runtime(
        Runtime(make_settings(embedding_dimension=8), loader=lambda *_: ToyFamily(dimension=4), on_fatal=fatal.append)
    )
    expected = (
        "EMBEDDING_DIMENSION=8 is more than the 4 dimensions of MODEL_PATH=/nowhere/toy-model; "
        "set at most 4 or leave it empty."
    )
    assert (runtime.status, runtime.detail, fatal) == ("error", expected, [expected])
    assert runtime.service is None


def test_an_embedding_dimension_at_the_models_size_starts() -> None:
    runtime = run_runtime(Runtime(make_settings(embedding_dimension=4), loader=lambda *_: ToyFamily(dimension=4)))
    assert runtime.status == "ok"


def test_a_failing_warm_up_is_an_error_and_not_ready() -> None:
    family = ToyFamily()
    family.fail = True
    fatal: list[str] = []
    runtime = run_runtime(Runtime(make_settings(), loader=lambda *_: family, on_fatal=fatal.append))
    assert runtime.status == "error" and not runtime.ready
    assert runtime.detail is not None
    assert runtime.detail.startswith("warming up the model from MODEL_PATH=/nowhere/toy-model on cpu failed: ")
    assert fatal == [runtime.detail]
    assert runtime.service is None


# ---- the batch budget -----------------------------------------------------------------------------------------


def test_a_cpu_family_gets_the_cpu_budget() -> None:
    budgets: list[Budget] = []
    run_runtime(
        Runtime(make_settings(max_batch_size=16), loader=lambda *_: ToyFamily(device="cpu")),
        lambda runtime: budgets.append(runtime.engine.budget),
    )
    assert budgets == [Budget(max_tokens=2048, max_pixels=8 * 512 * 512, max_items=16)]


def test_a_cuda_family_gets_the_gpu_budget() -> None:
    budgets: list[Budget] = []
    run_runtime(
        Runtime(make_settings(), loader=lambda *_: ToyFamily(device="cuda:0")),
        lambda runtime: budgets.append(runtime.engine.budget),
    )
    assert budgets == [Budget(max_tokens=16384, max_pixels=64 * 512 * 512, max_items=64)]


def test_batch_settings_override_the_budget() -> None:
    budgets: list[Budget] = []
    settings = make_settings(max_batch_tokens=300, max_batch_pixels=5000, max_batch_size=3)
    run_runtime(Runtime(settings, loader=lambda *_: ToyFamily()), lambda runtime: budgets.append(runtime.engine.budget))
    assert budgets == [Budget(max_tokens=300, max_pixels=5000, max_items=3)]


# ---- health after engine faults, and stop ------------------------------------------------------------------------


def test_the_canary_decides_health_after_repeated_faults() -> None:
    family = ToyFamily()
    answers: list[bool] = []

    async def check(runtime: Runtime) -> None:
        assert runtime.engine is not None
        answers.append(await runtime.engine_is_healthy())  # no faults yet: no canary needed
        runtime.engine.consecutive_failures = 3
        family.fail = True
        answers.append(await runtime.engine_is_healthy())  # the canary fails
        family.fail = False
        answers.append(await runtime.engine_is_healthy())  # the canary passes

    run_runtime(Runtime(make_settings(), loader=lambda *_: family), check)
    assert answers == [True, False, True]


def test_two_faults_do_not_run_the_canary() -> None:
    family = ToyFamily()
    answers: list[bool] = []

    async def check(runtime: Runtime) -> None:
        assert runtime.engine is not None
        runtime.engine.consecutive_failures = 2
        family.fail = True
        answers.append(await runtime.engine_is_healthy())

    run_runtime(Runtime(make_settings(), loader=lambda *_: family), check)
    assert answers == [True]


def test_stop_while_loading_cancels_the_load() -> None:
    gate = GatedLoader(ToyFamily())

    async def scenario() -> Runtime:
        runtime = Runtime(make_settings(), loader=gate)
        await runtime.start()
        assert await asyncio.to_thread(gate.entered.wait, 10)
        await runtime.stop()
        gate.release.set()  # the loader thread returns; the cancelled load must not turn the runtime ready
        await asyncio.sleep(0.1)
        return runtime

    runtime = asyncio.run(scenario())
    assert runtime.status == "loading" and not runtime.ready and runtime.service is None


def test_a_checkpoint_that_is_not_the_random_demo_has_no_note() -> None:
    runtime = run_runtime(Runtime(make_settings(), loader=lambda *_: ToyFamily()))
    assert runtime.random_weights is False
    assert runtime.random_weights_note is None


def test_the_model_loads_on_a_thread_that_ends_with_the_load() -> None:
    import threading

    loaded_on: list[threading.Thread] = []

    def loader(*_: object) -> ToyFamily:
        loaded_on.append(threading.current_thread())
        return ToyFamily()

    runtime = run_runtime(Runtime(make_settings(), loader=loader))
    assert runtime.status == "ok"
    assert loaded_on[0] is not threading.main_thread()
    loaded_on[0].join(timeout=5)
    assert not loaded_on[0].is_alive()  # its OpenMP team went with it
