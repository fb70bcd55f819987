"""The media URL guard: which URLs the server may fetch, and the one checked address each hop connects to.

Every URL (and every redirect hop) goes through `parse_url` (strict: only unambiguous http, https and file URLs)
and `UrlGuard.check` (domain allow-list, one DNS resolution, every address must be public unless private ones are
allowed). The fetcher then connects to the checked address itself, so a second DNS answer can never be used.
Refusals raise `UrlRefused`, whose message is safe to show the client (no DNS answers, no local paths).

Longer than most modules on purpose: URL parsing, the address rules and the DNS step are one security decision,
read and reviewed together; split, a gap between them would be easy to miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
import stat
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from embedding_api.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
SUPPORTED_SCHEMES = ("http", "https", "file")
PRIVATE_HINT = "(set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?$")
_DOTTED_DECIMAL = re.compile(r"^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$")
_IPV4_NUMBER = re.compile(r"^(?:\d+|0[xX][0-9a-fA-F]*)$")

# Ranges that are never "the public internet", listed here as well as taken from `ipaddress`'s flags,
# so the answer does not depend on the Python version.
_NON_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata at 169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)
_NON_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped (decided by the embedded address, see below)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo 2001::/32 included)
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class UrlRefused(Exception):
    """A URL the server will not fetch; the message is meant for the client and leaks nothing internal."""


@dataclass(frozen=True)
class UrlPolicy:
    """Where media URLs may lead. The defaults are the safe ones: public http(s) hosts only."""

    allow_private: bool = False
    allowed_domains: tuple[str, ...] = ()
    local_root: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(
            allow_private=settings.allow_private_media_urls,
            allowed_domains=parse_domains(settings.allowed_media_domains),
            local_root=settings.allowed_local_media_path,
        )


@dataclass(frozen=True)
class ParsedUrl:
    """A URL that passed the strict parse. `host` is lower-case, without brackets or a trailing dot."""

    scheme: str
    host: str
    port: int
    explicit_port: bool
    target: str  # path and query as written (the fragment dropped); '' for no path
    ip: IPAddress | None  # the address, when the host is an IP literal

    @property
    def authority(self) -> str:
        """host[:port] as the client wrote it: the Host header to send."""
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return f"{host}:{self.port}" if self.explicit_port else host

    @property
    def url(self) -> str:
        """The normalised URL (the base for relative redirects)."""
        if self.scheme == "file":
            return f"file://{self.target}"
        return f"{self.scheme}://{self.authority}{self.target or '/'}"


@dataclass(frozen=True)
class Hop:
    """One checked request: the URL rewritten to the checked address, plus the original name for Host and TLS."""

    url: ParsedUrl
    address: IPAddress

    @property
    def request_url(self) -> str:
        host = f"[{self.address.compressed}]" if self.address.version == 6 else self.address.compressed
        return f"{self.url.scheme}://{host}:{self.url.port}{self.url.target or '/'}"

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Host": self.url.authority}
        if self.url.scheme == "https":
            # Pooled connections are keyed by address only: never reuse a TLS session verified for another name.
            headers["Connection"] = "close"
        return headers

    @property
    def extensions(self) -> dict[str, str]:
        """httpcore's `sni_hostname`: SNI and certificate verification use the original name, not the address."""
        if self.url.scheme == "https" and self.url.ip is None:
            return {"sni_hostname": self.url.host}
        return {}


# ---- parsing --------------------------------------------------------------------------------------------------


def parse_domains(text: str) -> tuple[str, ...]:
    """ALLOWED_MEDIA_DOMAINS (a comma list) -> normalised hosts; `*.`/leading dots are dropped, IPs normalised."""
    domains: list[str] = []
    for raw in text.split(","):
        domain = raw.strip().lower().removeprefix("*.").strip(".")
        if domain.startswith("[") and domain.endswith("]"):
            domain = domain[1:-1]
        with contextlib.suppress(ValueError):
            domain = ipaddress.ip_address(domain).compressed
        if domain and domain not in domains:
            domains.append(domain)
    return tuple(domains)


def domain_allowed(url: ParsedUrl, domains: Sequence[str]) -> bool:
    """An empty list allows every host; a name matches itself and its subdomains; an IP literal matches only itself."""
    if not domains:
        return True
    if url.ip is not None:
        return url.ip.compressed in domains
    return any(url.host == domain or url.host.endswith(f".{domain}") for domain in domains)


def _check_characters(url: str) -> None:
    if "\\" in url:
        raise UrlRefused("URLs containing a backslash are ambiguous and are not accepted")
    for char in url:
        if char.isspace() or unicodedata.category(char)[0] in ("C", "Z"):
            raise UrlRefused("URLs must not contain spaces or control characters")


def _ends_in_number(host: str) -> bool:
    """WHATWG's rule: a host whose last label is a number (decimal, or 0x hex) is parsed as an IPv4 address."""
    return bool(_IPV4_NUMBER.match(host.rsplit(".", 1)[-1]))


def _parse_host(text: str) -> tuple[str, IPAddress | None]:
    if not text:
        raise UrlRefused("the URL has no host")
    if not text.isascii():
        raise UrlRefused("the URL's host must be ASCII (write international names in their xn-- form)")
    if text.startswith("["):
        if not text.endswith("]") or not re.fullmatch(r"[0-9A-Fa-f:.]+", text[1:-1]):
            raise UrlRefused("the URL's host is not a valid IPv6 address")
        try:
            ip6 = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise UrlRefused("the URL's host is not a valid IPv6 address") from None
        return ip6.compressed, ip6
    host = text.lower()
    host = host.removesuffix(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if _ends_in_number(host):
        if not _DOTTED_DECIMAL.match(host):
            raise UrlRefused(
                "numeric hosts must be a plain dotted-decimal IPv4 address (like 203.0.113.7); "
                "short, octal, hexadecimal and integer forms are not accepted"
            )
        return host, ipaddress.IPv4Address(host)
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UrlRefused("the URL's host is not a valid host name")
    return host, None


def parse_url(url: str) -> ParsedUrl:
    """Strictly parse an http, https or file URL; anything that two parsers could read differently is refused."""
    _check_characters(url)
    match = _SCHEME.match(url)
    if match is None:
        raise UrlRefused("is not a valid URL")
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise UrlRefused(f"URL scheme {scheme!r} is not supported; use http or https")
    rest = url[match.end() :].split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if scheme == "file":
        if authority or not target.startswith("/") or "?" in target:
            raise UrlRefused("file URLs must have the form file:///absolute/path")
        return ParsedUrl(scheme, "", 0, False, target, None)
    if "@" in authority:
        raise UrlRefused("URLs with a user name or password ('user@host') are not accepted")
    host_text, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0:
            host_text, after = authority[: end + 1], authority[end + 1 :]
            if after and not after.startswith(":"):
                raise UrlRefused("the URL's host is not a valid IPv6 address")
            port_text = after[1:] if after else ""
            explicit = bool(after)
        else:
            explicit = False
    else:
        explicit = ":" in authority
        if explicit:
            host_text, port_text = authority.split(":", 1)
    host, ip = _parse_host(host_text)
    if explicit:
        if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5 and 0 < int(port_text) < 65536):
            raise UrlRefused("the URL's port must be a number from 1 to 65535")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    return ParsedUrl(scheme, host, port, explicit, target, ip)


# ---- addresses ------------------------------------------------------------------------------------------------


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped, IPv4-compatible, NAT64, 6to4 and Teredo forms."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    if any(ip in net for net in _NON_PUBLIC_V4):
        return False
    flags = (ip.is_private, ip.is_loopback, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    return ip.is_global and not any(flags)


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast, and so is every IPv4 address embedded in it (checked too)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _is_public_v4(ip)
    embedded = embedded_ipv4(ip)
    if ip.ipv4_mapped is not None or ip in _NAT64:  # only a translation of the IPv4 address: that one decides
        return _is_public_v4(embedded[0])
    if not all(_is_public_v4(v4) for v4 in embedded):
        return False
    if any(ip in net for net in _NON_PUBLIC_V6):
        return False
    flags = (ip.is_private, ip.is_loopback, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    return ip.is_global and not any(flags) and not ip.is_site_local


def is_connectable_address(ip: IPAddress) -> bool:
    """What private mode still refuses: addresses no fetch can mean (unspecified, multicast, broadcast)."""
    for candidate in [ip, *embedded_ipv4(ip)]:
        if candidate.is_unspecified or candidate.is_multicast or candidate == _BROADCAST:
            return False
    return True


# ---- the guard ------------------------------------------------------------------------------------------------


async def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver (one getaddrinfo call): every address the name has, as strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class UrlGuard:
    """Checks URLs against a `UrlPolicy` and names the one address each hop may connect to."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver = resolver

    def address_allowed(self, host: str, ip: IPAddress) -> bool:
        """Whether a hop to `host` may connect to `ip` (the host is given so tests can vouch for one name)."""
        if self.policy.allow_private:
            return is_connectable_address(ip)
        return is_public_address(ip)

    async def _resolve(self, url: ParsedUrl) -> list[IPAddress]:
        resolver = self.resolver or resolve_host
        try:
            answers = await resolver(url.host, url.port)
        except (OSError, UnicodeError):
            raise UrlRefused("the URL's host could not be resolved") from None
        addresses: list[IPAddress] = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer.split("%", 1)[0]))
            except ValueError:
                raise UrlRefused("the URL's host could not be resolved") from None
        if not addresses:
            raise UrlRefused("the URL's host could not be resolved")
        return addresses

    async def check(self, url: ParsedUrl) -> Hop:
        """The hop to make for an http(s) URL; the host is resolved once and EVERY address must be allowed."""
        if url.scheme not in DEFAULT_PORTS:
            raise UrlRefused(f"URL scheme {url.scheme!r} is not supported here; use http or https")
        if not domain_allowed(url, self.policy.allowed_domains):
            raise UrlRefused("the URL's host is not in ALLOWED_MEDIA_DOMAINS")
        if url.ip is not None:
            if not self.address_allowed(url.host, url.ip):
                raise UrlRefused(f"the URL points to a non-public address {PRIVATE_HINT}")
            return Hop(url, url.ip)
        addresses = await self._resolve(url)
        if not all(self.address_allowed(url.host, ip) for ip in addresses):
            raise UrlRefused(f"the URL's host resolves to a non-public address {PRIVATE_HINT}")
        return Hop(url, addresses[0])

    def local_file(self, url: ParsedUrl) -> Path:
        """The file a file:// URL names, when it lies inside ALLOWED_LOCAL_MEDIA_PATH (symlinks resolved)."""
        if not self.policy.local_root:
            raise UrlRefused("file:// URLs are not allowed (set ALLOWED_LOCAL_MEDIA_PATH to allow a folder)")
        try:
            raw = unquote(url.target, errors="strict")
        except UnicodeDecodeError:
            raise UrlRefused("the file URL's path is not valid UTF-8") from None
        if "\x00" in raw:
            raise UrlRefused("file URLs must not contain NUL characters")
        try:
            root = Path(self.policy.local_root).resolve()
            path = Path(raw).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise UrlRefused("the file could not be read") from None
        if not path.is_relative_to(root) or path == root:
            raise UrlRefused("the file is outside ALLOWED_LOCAL_MEDIA_PATH")
        return path


def read_local_file(path: Path, max_bytes: int) -> bytes:
    """Read a regular file of at most `max_bytes` (size checked first, then while reading)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        raise UrlRefused("the file could not be read") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UrlRefused("the URL does not name a regular file")
        if info.st_size > max_bytes:
            raise UrlRefused(f"the file is over the {max_bytes} byte limit")
        data = _read_at_most(lambda size: os.read(fd, size), max_bytes + 1)
    except OSError:
        raise UrlRefused("the file could not be read") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UrlRefused(f"the file is over the {max_bytes} byte limit")
    return data


def _read_at_most(read: Callable[[int], bytes], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = read(min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
