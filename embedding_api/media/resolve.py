"""A request's media references to items: fetched (URLs) or decoded inline, a bounded number at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from PIL import Image

from embedding_api.items import Item, VideoClip
from embedding_api.media.decode import MediaLimits, PixelBudget, decode_image, decode_inline, decode_video
from embedding_api.media.fetch import FetchShare, MediaFetcher
from embedding_api.media.parse import ItemSpec, MediaRef, is_url


class MediaResolver:
    """Fetches and decodes a request's media references, a bounded number at a time.

    At most MAX_FETCHES_PER_REQUEST workers go through a request's references (no task per reference, however many
    it has), and each URL is fetched in a slot of the request's fair share of MAX_CONCURRENT_FETCHES
    (`embedding_api.media.fetch.FetchSlots`), so one request can neither flood the HTTP pool nor starve other requests.
    """

    def __init__(
        self,
        fetcher: MediaFetcher,
        limits: MediaLimits,
        on_fetched: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.limits = limits
        self.on_fetched = on_fetched  # (media kind, seconds, bytes) per URL downloaded, for metrics

    async def _bytes(self, ref: MediaRef, expect: str, share: FetchShare) -> bytes:
        if is_url(ref.source):
            async with share.slot():
                started = time.perf_counter()
                data = await self.fetcher.fetch_in_slot(ref.source, ref.param)
            if self.on_fetched is not None:
                self.on_fetched(expect, time.perf_counter() - started, len(data))
            return data
        return decode_inline(ref.source, ref.param, expect=expect)

    async def _decoded(
        self, ref: MediaRef, expect: str, share: FetchShare, budget: PixelBudget
    ) -> Image.Image | VideoClip:
        data = await self._bytes(ref, expect, share)
        if expect == "video":
            return await asyncio.to_thread(decode_video, data, ref.param, self.limits)
        return await asyncio.to_thread(decode_image, data, ref.param, self.limits, budget)

    async def resolve(self, specs: list[ItemSpec]) -> list[Item]:
        """All of a request's media; the first failure cancels the rest and is raised."""
        jobs: list[tuple[MediaRef, str]] = []  # (reference, "image" or "video"), in request order

        def job(ref: MediaRef, expect: str) -> int:
            jobs.append((ref, expect))
            return len(jobs) - 1

        plans: list[tuple[list[int], list[int | list[int]]]] = []  # per item: image jobs; per video a job or frames
        for spec in specs:
            videos: list[int | list[int]] = []
            for video in spec.videos:
                if video.url is not None:
                    videos.append(job(video.url, "video"))
                else:
                    # Only the frames the model will see are fetched and decoded.
                    positions = self.limits.frames.list_positions(len(video.frames))
                    videos.append([job(video.frames[p], "image") for p in positions])
            plans.append(([job(ref, "image") for ref in spec.images], videos))
        done = await self._run(jobs)

        def image(index: int) -> Image.Image:
            value = done[index]
            assert isinstance(value, Image.Image)
            return value

        def clip(plan: int | list[int]) -> VideoClip:
            if isinstance(plan, list):
                return VideoClip(frames=[image(index) for index in plan])
            value = done[plan]
            assert isinstance(value, VideoClip)
            return value

        return [
            Item(
                texts=list(spec.texts),
                images=[image(index) for index in images],
                videos=[clip(plan) for plan in videos],
                instruction=spec.instruction,
            )
            for spec, (images, videos) in zip(specs, plans, strict=True)
        ]

    async def _run(self, jobs: list[tuple[MediaRef, str]]) -> list[Image.Image | VideoClip | None]:
        done: list[Image.Image | VideoClip | None] = [None] * len(jobs)
        if not jobs:
            return done
        share = self.fetcher.slots.share()
        budget = PixelBudget(self.limits.max_request_pixels)
        pending = iter(range(len(jobs)))  # shared: each worker takes the next job not yet taken

        async def worker() -> None:
            for index in pending:
                ref, expect = jobs[index]
                done[index] = await self._decoded(ref, expect, share, budget)

        count = min(len(jobs), self.fetcher.limits.max_in_flight_per_request)
        workers = [asyncio.ensure_future(worker()) for _ in range(count)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            # Let the cancelled workers unwind (closing their connections, handing back their slots) before answering.
            await asyncio.gather(*workers, return_exceptions=True)
        return done
