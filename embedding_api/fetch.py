"""Downloading media by URL, the one place the server fetches URLs.

Every URL and every redirect hop passes the URL guard (`embedding_api.url_guard`): strict parse, domain allow-list,
one DNS resolution with every address checked, then a connection to that checked address (Host header and TLS name
kept). Redirects are followed by hand; the whole fetch has one timeout and the body a byte cap, checked from
Content-Length first and again while streaming.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import httpx

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.url_guard import (
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
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class FetchLimits:
    """How long a fetch may take, how large a body may be, how many redirects it may follow, and where it may go."""

    timeout: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3
    policy: UrlPolicy = field(default_factory=UrlPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        return cls(
            timeout=settings.image_fetch_timeout,
            max_bytes=settings.max_image_bytes,
            max_redirects=settings.max_redirects,
            policy=UrlPolicy.from_settings(settings),
        )


def is_fetchable(source: str) -> bool:
    """Sources that name a location (`scheme://...`, fetched or refused by the guard) rather than carry the bytes."""
    return _URL_LIKE.match(source) is not None


def _error(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.MEDIA_FETCH, f"{param}: {message}", param=param)


class MediaFetcher:
    """GETs media URLs with the shared httpx client, through the URL guard."""

    def __init__(self, client: httpx.AsyncClient, limits: FetchLimits, resolver: Resolver | None = None) -> None:
        self.client = client
        self.limits = limits
        self.guard = UrlGuard(limits.policy, resolver)

    async def fetch(self, url: str, param: str) -> bytes:
        """The body of `url`, or an ApiError (MEDIA_FETCH, 400) that says why not without internal details."""
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
