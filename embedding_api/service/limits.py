"""What every use case does the same way with a request's items: parse under the request limits, prepare and batch
them under MAX_TOKENS_PER_REQUEST, name a failing item by its field, and stop at REQUEST_TIMEOUT."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from embedding_api.engine.batcher import EmbedResult, Engine
from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import DEFAULT_PRIORITY, Item, Priority
from embedding_api.media.parse import ItemSpec, parse_input
from embedding_api.settings import Settings

Result = TypeVar("Result")


async def within_request_timeout(settings: Settings, work: Coroutine[Any, Any, Result]) -> Result:
    try:
        async with asyncio.timeout(settings.request_timeout):
            return await work
    except TimeoutError:
        raise ApiError(
            ErrorKind.TIMEOUT, f"the request took longer than REQUEST_TIMEOUT={settings.request_timeout:g} s"
        ) from None


def parse_within_limits(raw: Any, settings: Settings, max_items: int) -> list[ItemSpec]:
    """`parse_input` with the request limits from settings."""
    return parse_input(
        raw,
        max_items=max_items,
        max_text_chars=settings.max_text_chars,
        max_media_per_item=settings.max_media_per_item,
        max_media_per_request=settings.max_media_per_request,
        max_parts_per_item=settings.max_parts_per_item,
        max_instruction_chars=settings.max_instruction_chars,
    )


# A longer `input` is parsed in a worker thread: at ~25 us an item, a 2,048-text request would otherwise hold the
# event loop (and every query waiting on it) for ~50 ms.
OFF_LOOP_ITEMS = 256


async def parse_off_loop(raw: Any, settings: Settings, max_items: int) -> list[ItemSpec]:
    """`parse_within_limits`, in a worker thread when `raw` is a long array."""
    if isinstance(raw, list) and len(raw) > OFF_LOOP_ITEMS:
        return await asyncio.to_thread(parse_within_limits, raw, settings, max_items)
    return parse_within_limits(raw, settings, max_items)


async def run_items(
    engine: Engine,
    items: list[Item],
    params: list[str],
    settings: Settings,
    *,
    param: str,
    advice: str,
    priority: Priority = DEFAULT_PRIORITY,
) -> EmbedResult:
    """Prepare and batch the items at `priority`; over MAX_TOKENS_PER_REQUEST a 400 on `param` with `advice`; a
    failing item's error names it by its own field (`params[i]`)."""
    try:
        prepared = await engine.prepare(items, priority)
        total = sum(item.tokens for item in prepared)
        if total > settings.max_tokens_per_request:
            raise ApiError(
                ErrorKind.INVALID_REQUEST,
                f"the request needs {total} tokens, above MAX_TOKENS_PER_REQUEST={settings.max_tokens_per_request}; "
                + advice,
                param=param,
            )
        return await engine.embed(prepared, priority)
    except ApiError as error:
        if error.param is None and error.item_index is not None:
            error.param = params[error.item_index]
        raise
