"""`embedding_api.media.resolve`: a request's media references resolved to `Item`s, fetched and decoded."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from PIL import Image

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.families.frames import QwenFramePicker
from embedding_api.items import Item
from embedding_api.media.decode import MediaLimits
from embedding_api.media.fetch import FetchLimits, MediaFetcher
from embedding_api.media.parse import parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.media.url_guard import UrlPolicy
from tests.conftest import MediaServer, b64, data_uri, image_bytes, make_image

LIMITS = MediaLimits(frames=QwenFramePicker())
FETCH_LIMITS = FetchLimits(policy=UrlPolicy(allow_private=True))  # the test media server is on 127.0.0.1


def resolve(raw: Any, limits: MediaLimits = LIMITS) -> list[Item]:
    async def go() -> list[Item]:
        async with httpx.AsyncClient() as client:
            return await MediaResolver(MediaFetcher(client, FETCH_LIMITS), limits).resolve(
                parse_input(raw, max_items=100)
            )

    return asyncio.run(go())


def test_resolve_fetches_and_decodes_every_form(media_server: MediaServer) -> None:
    url = media_server.add("/a.png", image_bytes(Image.new("RGB", (8, 8), (255, 0, 0))))
    inline = image_bytes(Image.new("RGB", (6, 6), (0, 255, 0)))
    items = resolve(
        [
            "text only",
            {"type": "image_url", "image_url": {"url": url}},
            ["caption", {"type": "image", "data": b64(inline)}],
            {"type": "video", "data": [url, data_uri(inline)], "instruction": "Describe."},
        ]
    )
    assert [item.texts for item in items] == [["text only"], [], ["caption"], []]
    assert items[0].images == [] and items[0].videos == []
    assert items[1].images[0].getpixel((0, 0)) == (255, 0, 0)
    assert items[2].images[0].size == (6, 6)
    [clip] = items[3].videos
    assert [frame.getpixel((0, 0)) for frame in clip.frames] == [(255, 0, 0), (0, 255, 0)]
    assert items[3].instruction == "Describe."
    assert media_server.hits["/a.png"] == 2


def test_resolve_names_the_failing_item(media_server: MediaServer) -> None:
    good = media_server.add("/good.png", image_bytes(make_image()))
    with pytest.raises(ApiError) as caught:
        resolve(["a", {"type": "image", "data": good}, "c", {"type": "image", "data": data_uri(b"not an image")}])
    assert caught.value.param == "input[3]"
    assert caught.value.kind is ErrorKind.MEDIA_DECODE
