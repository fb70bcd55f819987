"""Downloading media by URL, the one place the server fetches URLs.

Every URL and every redirect hop passes the URL guard (`embedding_api.media.url_guard`): strict parse, domain allow-list,
one DNS resolution with every address checked, then a connection to that checked address (Host header and TLS name
kept). Redirects are followed by hand; the whole fetch has one timeout and the body a byte cap, checked from
Content-Length first and again while streaming.

How many fetches run at once is bounded in front of the httpx pool (`FetchSlots`), never by the pool's own queue:
httpcore re-scans its whole queue and connection list on every request start and cancel, so thousands of queued
fetches cost time that grows with the square of their number, all on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import httpx

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.media.url_guard import (
    ParsedUrl,
    Resolver,
    UrlGuard,
    UrlPolicy,
    UrlRefused,
    parse_url,
    read_local_file,
)

if TYPE_CHECKING:
    from embedding_api.settings import Settings

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchLimits:
    """How long a fetch may take, how large a body may be, how many redirects it may follow, where it may go, and how
    many fetches may run at once (in all, and for one request)."""

    timeout: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    max_in_flight: int = 64
    max_in_flight_per_request: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        return cls(
            timeout=settings.image_fetch_timeout,
            max_bytes=settings.max_image_bytes,
            max_redirects=settings.max_redirects,
            policy=UrlPolicy.from_settings(settings),
            max_in_flight=settings.max_concurrent_fetches,
            max_in_flight_per_request=settings.max_fetches_per_request,
        )


def media_client(limits: FetchLimits) -> httpx.AsyncClient:
    """The shared client for media URLs; its pool holds every fetch `FetchSlots` lets through, so none queue in it."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.timeout),
        limits=httpx.Limits(
            max_connections=limits.max_in_flight, max_keepalive_connections=min(20, limits.max_in_flight)
        ),
        # An environment proxy would make the connection itself, around the URL guard's checked address.
        trust_env=False,
    )


class FetchSlots:
    """At most `total` fetches in flight over all requests, handed out fairly between requests.

    Each request fetches through its own `FetchShare` with at most MAX_FETCHES_PER_REQUEST fetches at a time (the
    resolver runs that many workers), well below the total, so several requests always progress. When all slots
    are taken, a freed slot goes to the waiting request with the fewest fetches in flight (the longest waiting
    among equals): a request that just arrived is served next even if others keep hundreds of slow URLs queued,
    which a plain FIFO semaphore would not do. Waiting costs a future in a deque, and cancelling it touches nothing
    else, so dropping thousands of queued fetches is cheap.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.in_flight = 0
        self._waiting: list[FetchShare] = []  # shares that may have queued waiters
        self._order = itertools.count()

    def share(self) -> FetchShare:
        return FetchShare(self)

    def _enqueue(self, share: FetchShare) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not share.queue:
            self._waiting.append(share)
        share.queue.append((next(self._order), future))
        return future

    def _release(self, share: FetchShare) -> None:
        share.active -= 1
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        while self.in_flight < self.total:
            best: FetchShare | None = None
            for share in list(self._waiting):
                while share.queue and share.queue[0][1].done():  # cancelled while waiting
                    share.queue.popleft()
                if not share.queue:
                    self._waiting.remove(share)
                elif best is None or (share.active, share.queue[0][0]) < (best.active, best.queue[0][0]):
                    best = share
            if best is None:
                return
            _, future = best.queue.popleft()
            if not best.queue:
                self._waiting.remove(best)
            best.active += 1
            self.in_flight += 1
            future.set_result(None)


class FetchShare:
    """One request's access to the `FetchSlots`."""

    def __init__(self, slots: FetchSlots) -> None:
        self.slots = slots
        self.active = 0
        self.queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        slots = self.slots
        if slots.in_flight < slots.total and not slots._waiting:
            self.active += 1
            slots.in_flight += 1
        else:
            future = slots._enqueue(self)
            slots._grant()  # a slot may be free already (stale waiters): then this or a fairer waiter gets it
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # granted, then cancelled before it ran: give it back
                    slots._release(self)
                raise
        try:
            yield
        finally:
            slots._release(self)


def _error(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.MEDIA_FETCH, message, param=param)


class MediaFetcher:
    """GETs media URLs with the shared httpx client, through the URL guard."""

    def __init__(self, client: httpx.AsyncClient, limits: FetchLimits, resolver: Resolver | None = None) -> None:
        self.client = client
        self.limits = limits
        self.guard = UrlGuard(limits.policy, resolver)
        self.slots = FetchSlots(limits.max_in_flight)

    async def fetch(self, url: str, param: str, share: FetchShare | None = None) -> bytes:
        """The body of `url`, or an ApiError (MEDIA_FETCH, 400) that says why not without internal details.

        The fetch first waits for a slot of `share` (one request's share of the fetch slots; a share of its own when
        not given); its timeout starts once it has one.
        """
        async with (share or self.slots.share()).slot():
            return await self.fetch_in_slot(url, param)

    async def fetch_in_slot(self, url: str, param: str) -> bytes:
        """`fetch` for a caller that already holds a slot of `self.slots`."""
        try:
            async with asyncio.timeout(self.limits.timeout):
                return await self._fetch(url, param)
        except ApiError:
            raise
        except UrlRefused as exc:
            raise _error(str(exc), param) from None
        except TimeoutError:
            raise _error(f"fetching the URL took longer than {self.limits.timeout:g} s", param) from None
        except httpx.HTTPError as exc:
            raise _error(f"could not fetch the URL ({type(exc).__name__})", param) from None

    async def _fetch(self, url: str, param: str) -> bytes:
        current = parse_url(url)
        if current.scheme == "file":
            path = self.guard.local_file(current)
            return await asyncio.to_thread(read_local_file, path, self.limits.max_bytes)
        redirects = 0
        while True:
            try:
                hop = await self.guard.check(current)
            except UrlRefused as exc:
                if redirects:
                    raise UrlRefused(f"a redirect was refused: {exc}") from None
                raise
            async with self.client.stream(
                "GET",
                hop.request_url,
                headers=hop.headers,
                extensions=hop.extensions,
                follow_redirects=False,
                timeout=httpx.Timeout(self.limits.timeout),
            ) as response:
                status = response.status_code
                if status in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise _error(f"fetching the URL gave HTTP {status} without a Location header", param)
                    if redirects >= self.limits.max_redirects:
                        raise _error(
                            f"the URL redirected more than {self.limits.max_redirects} times (MAX_REDIRECTS)", param
                        )
                    redirects += 1
                    current = self._redirect_target(current.url, location)
                    continue
                if status != 200:
                    raise _error(f"fetching the URL gave HTTP {status}", param)
                return await self._read_body(response, param)

    @staticmethod
    def _redirect_target(base: str, location: str) -> ParsedUrl:
        try:
            target = parse_url(urljoin(base, location))
        except ValueError:
            raise UrlRefused("a redirect was refused: its Location is not a valid URL") from None
        except UrlRefused as exc:
            raise UrlRefused(f"a redirect was refused: {exc}") from None
        if target.scheme == "file":
            raise UrlRefused("a redirect was refused: redirects may only lead to http or https URLs")
        return target

    async def _read_body(self, response: httpx.Response, param: str) -> bytes:
        cap = self.limits.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise _error(f"the URL's body is over the {cap} byte limit", param)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise _error(f"the URL's body is over the {cap} byte limit", param)
            chunks.append(chunk)
        return b"".join(chunks)
