"""`embedding_api.media.fetch`: fetching media URLs with limits, redirects by hand, and the SSRF guard end to end.

No test here may send a packet anywhere but 127.0.0.0/8: the autouse `connections` fixture replaces the connection
layer's connect with one that records every attempt and fails at once for any other address (or for a host name,
which would mean a second DNS lookup). Hostile URLs must be refused before that point.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpcore._backends.auto import AutoBackend

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.media import url_guard
from embedding_api.media.decode import MediaLimits
from embedding_api.media.fetch import FetchLimits, FetchShare, FetchSlots, MediaFetcher, media_client
from embedding_api.media.parse import parse_input
from embedding_api.media.resolve import MediaResolver
from embedding_api.media.url_guard import IPAddress, Resolver, UrlGuard, UrlPolicy
from tests.conftest import LocalHttpServer, MediaServer, free_port, image_bytes, make_image
from tests.fakes import FakeDnsResolver

PARAM = "input[2]"
PRIVATE_OK = UrlPolicy(allow_private=True)
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
PNG = image_bytes(make_image(16, 16, seed=4))


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the HTTP client attempts; anything but an address in 127.0.0.0/8 fails immediately."""
    attempts: list[tuple[str, int]] = []
    original = AutoBackend.connect_tcp

    async def guarded(self: AutoBackend, host: str, port: int, **kwargs: Any) -> Any:
        attempts.append((host, port))
        try:
            on_loopback = ipaddress.ip_address(host) in LOOPBACK
        except ValueError:
            on_loopback = False
        if not on_loopback:
            raise AssertionError(f"a test tried to connect to {host}:{port}")
        return await original(self, host, port, **kwargs)

    monkeypatch.setattr(AutoBackend, "connect_tcp", guarded)
    return attempts


def limits(policy: UrlPolicy = PRIVATE_OK, **values: Any) -> FetchLimits:
    return FetchLimits(policy=policy, **values)


def fetch(
    url: str,
    fetch_limits: FetchLimits | None = None,
    resolver: Resolver | None = None,
    client: Callable[[], httpx.AsyncClient] = httpx.AsyncClient,
) -> bytes:
    async def go() -> bytes:
        async with client() as http:
            return await MediaFetcher(http, fetch_limits or limits(), resolver).fetch(url, PARAM)

    return asyncio.run(go())


def fetch_error(url: str, fetch_limits: FetchLimits | None = None, resolver: Resolver | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fetch(url, fetch_limits, resolver)
    error = caught.value
    assert error.kind is ErrorKind.MEDIA_FETCH
    assert error.status == 400
    assert error.param == PARAM
    assert str(error).startswith(f"{PARAM}: ")
    return error


def vouch_for(monkeypatch: pytest.MonkeyPatch, host: str, address: str) -> None:
    """Let the guard treat `address` as public for `host` only: a stand-in for a public CDN we cannot reach here."""
    original = UrlGuard.address_allowed
    vouched = ipaddress.ip_address(address)

    def address_allowed(self: UrlGuard, name: str, ip: IPAddress) -> bool:
        return (name == host and ip == vouched) or original(self, name, ip)

    monkeypatch.setattr(UrlGuard, "address_allowed", address_allowed)


class RouteServer(LocalHttpServer):
    """Per-path status, headers and body, with redirects."""

    def add(self, path: str, body: bytes = PNG, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.routes[path] = (status, headers or {"Content-Type": "image/png"}, body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.add(path, b"", status, {"Location": location})


@pytest.fixture
def routes() -> Iterator[RouteServer]:
    server = RouteServer()
    yield server
    server.close()


# ---- MediaFetcher.fetch ------------------------------------------------------------------------------------------


def test_fetch_200(media_server: MediaServer) -> None:
    png = image_bytes(make_image())
    url = media_server.add("/ok.png", png)
    assert fetch(url) == png
    assert media_server.hits["/ok.png"] == 1


def test_fetch_404(media_server: MediaServer) -> None:
    error = fetch_error(media_server.add("/gone.png", b"missing", "text/plain", status=404))
    assert "HTTP 404" in str(error)


def test_fetch_redirect_without_location(media_server: MediaServer) -> None:
    error = fetch_error(media_server.add("/moved.png", b"", "text/plain", status=302))
    assert "HTTP 302 without a Location header" in str(error)


def test_fetch_body_over_max_bytes(media_server: MediaServer) -> None:
    url = media_server.add("/big.png", b"x" * 2000)
    error = fetch_error(url, limits(max_bytes=1999))
    assert "1999 byte limit" in str(error)
    assert fetch(url, limits(max_bytes=2000)) == b"x" * 2000


class _Server:
    """A one-handler HTTP server on 127.0.0.1 that stops on exit."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/media"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def undeclared_length_server() -> Iterator[_Server]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # HTTP/1.0, no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"y" * 1000)

        def log_message(self, *args: Any) -> None:
            pass

    with _Server(Handler) as server:
        yield server


def test_fetch_body_over_max_bytes_without_content_length(undeclared_length_server: _Server) -> None:
    error = fetch_error(undeclared_length_server.url, limits(max_bytes=4000))
    assert "4000 byte limit" in str(error)
    assert fetch(undeclared_length_server.url, limits(max_bytes=10_000)) == b"y" * 10_000


def test_fetch_timeout() -> None:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(timeout=1.5)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    with _Server(Handler) as server:
        started = time.monotonic()
        try:
            error = fetch_error(server.url, limits(timeout=0.2))
        finally:
            release.set()
        elapsed = time.monotonic() - started
    assert "longer than 0.2 s" in str(error)
    assert elapsed < 1.2


def test_fetch_timeout_covers_dns_resolution() -> None:
    async def slow_resolver(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    started = time.monotonic()
    error = fetch_error("http://slow.example/a.png", limits(timeout=0.2), slow_resolver)
    assert "longer than 0.2 s" in str(error)
    assert time.monotonic() - started < 1.2


def test_fetch_connection_refused() -> None:
    error = fetch_error(f"http://127.0.0.1:{free_port()}/nothing.png")
    assert "could not fetch" in str(error)


# ---- the guard in the fetcher -----------------------------------------------------------------------------------


def test_connects_to_the_checked_address_with_the_original_host_header(
    routes: RouteServer, connections: list[tuple[str, int]]
) -> None:
    routes.add("/img.png?v=1")
    resolver = FakeDnsResolver({"images.internal.test": ["127.0.0.1"]})
    assert fetch(routes.url("/img.png?v=1", host="Images.Internal.TEST"), resolver=resolver) == PNG
    assert resolver.calls == [("images.internal.test", routes.port)]
    assert connections == [("127.0.0.1", routes.port)]
    assert routes.hosts == [f"images.internal.test:{routes.port}"]


def test_private_addresses_are_refused_by_default(routes: RouteServer, connections: list[tuple[str, int]]) -> None:
    routes.add("/img.png")
    error = fetch_error(routes.url("/img.png"), limits(UrlPolicy()))
    assert str(error) == (
        f"{PARAM}: the URL points to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"
    )
    named = fetch_error(
        routes.url("/img.png", host="cdn.test"), limits(UrlPolicy()), FakeDnsResolver({"cdn.test": ["127.0.0.1"]})
    )
    assert str(named) == (
        f"{PARAM}: the URL's host resolves to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"
    )
    assert "127.0.0.1" not in str(named)
    assert routes.hits == {} and connections == []


def test_unresolvable_host() -> None:
    error = fetch_error("http://nowhere.test/a.png", resolver=FakeDnsResolver({}))
    assert str(error) == f"{PARAM}: the URL's host could not be resolved"


# ---- DNS rebinding --------------------------------------------------------------------------------------------


def test_dns_rebinding_cannot_win(
    routes: RouteServer, connections: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once per hop and the connection goes to exactly that checked address."""
    routes.add("/img.png")
    resolver = FakeDnsResolver({"rebind.test": ["127.0.0.1"]}, later={"rebind.test": ["169.254.169.254"]})
    vouch_for(monkeypatch, "rebind.test", "127.0.0.1")
    assert fetch(routes.url("/img.png", host="rebind.test"), limits(UrlPolicy()), resolver) == PNG
    assert resolver.calls == [("rebind.test", routes.port)]
    assert connections == [("127.0.0.1", routes.port)]
    assert routes.hosts == [f"rebind.test:{routes.port}"]


def test_dns_rebinding_between_redirect_hops_is_caught(
    routes: RouteServer, connections: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hop resolves again (once) and checks again: a name that flips to a metadata address is refused."""
    routes.redirect("/first", "/second")
    routes.add("/second")
    resolver = FakeDnsResolver({"rebind.test": ["127.0.0.1"]}, later={"rebind.test": ["169.254.169.254"]})
    vouch_for(monkeypatch, "rebind.test", "127.0.0.1")
    error = fetch_error(routes.url("/first", host="rebind.test"), limits(UrlPolicy()), resolver)
    assert "a redirect was refused: the URL's host resolves to a non-public address" in str(error)
    assert resolver.calls == [("rebind.test", routes.port)] * 2
    assert connections == [("127.0.0.1", routes.port)]
    assert routes.hits == {"/first": 1}


# ---- redirects ------------------------------------------------------------------------------------------------


def test_redirect_chain_up_to_max_redirects(routes: RouteServer) -> None:
    routes.redirect("/r1", routes.url("/r2"), 301)  # absolute
    routes.redirect("/r2", f"//127.0.0.1:{routes.port}/r3", 303)  # scheme-relative
    routes.redirect("/r3", "img.png", 307)  # relative to /r3
    routes.add("/img.png")
    assert fetch(routes.url("/r1"), limits(max_redirects=3)) == PNG
    assert routes.hits == {"/r1": 1, "/r2": 1, "/r3": 1, "/img.png": 1}


def test_one_redirect_too_many(routes: RouteServer) -> None:
    routes.redirect("/r1", "/r2", 308)
    routes.redirect("/r2", "/r3")
    routes.redirect("/r3", "/r4")
    routes.redirect("/r4", "/img.png")
    routes.add("/img.png")
    error = fetch_error(routes.url("/r1"), limits(max_redirects=3))
    assert "redirected more than 3 times (MAX_REDIRECTS)" in str(error)
    assert "/img.png" not in routes.hits
    assert fetch(routes.url("/r1"), limits(max_redirects=4)) == PNG


def test_redirect_loop_ends(routes: RouteServer) -> None:
    routes.redirect("/loop", "/loop")
    error = fetch_error(routes.url("/loop"), limits(max_redirects=3))
    assert "more than 3 times" in str(error)
    assert routes.hits == {"/loop": 4}


def test_no_redirects_when_max_redirects_is_zero(routes: RouteServer) -> None:
    routes.redirect("/moved", "/img.png")
    routes.add("/img.png")
    assert "more than 0 times" in str(fetch_error(routes.url("/moved"), limits(max_redirects=0)))
    assert "/img.png" not in routes.hits


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "redirects may only lead to http or https"),
        ("gopher://127.0.0.1:70/_x", "not supported"),
        ("http://127.0.0.1:1\\@example.com/", "backslash"),
        ("http://example.com@127.0.0.1/", "user name or password"),
        ("http://2130706433/", "dotted-decimal"),
        ("http://exa%6dple.com/", "not a valid host name"),
        ("http://a b/", "spaces or control characters"),
    ],
)
def test_redirects_to_refused_urls(routes: RouteServer, location: str, reason: str) -> None:
    routes.redirect("/start", location)
    error = fetch_error(routes.url("/start"))
    assert "a redirect was refused" in str(error)
    assert reason in str(error)
    assert routes.hits == {"/start": 1}


def test_redirect_to_an_unparseable_location(routes: RouteServer) -> None:
    routes.redirect("/start", "http://[::1/")
    assert "could not fetch the URL" in str(fetch_error(routes.url("/start")))
    assert routes.hits == {"/start": 1}


def test_allowed_domains_apply_to_every_hop(routes: RouteServer, connections: list[tuple[str, int]]) -> None:
    resolver = FakeDnsResolver({"img.example.com": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})
    policy = UrlPolicy(allow_private=True, allowed_domains=("example.com",))
    routes.add("/img.png")
    routes.redirect("/away", routes.url("/img.png", host="evil.test"))
    routes.redirect("/stay", routes.url("/img.png", host="cdn.img.example.com"))
    assert fetch(routes.url("/img.png", host="img.example.com"), limits(policy), resolver) == PNG
    error = fetch_error(routes.url("/away", host="img.example.com"), limits(policy), resolver)
    assert "a redirect was refused: the URL's host is not in ALLOWED_MEDIA_DOMAINS" in str(error)
    for url in (routes.url("/img.png", host="evil-example.com"), routes.url("/img.png")):
        assert "not in ALLOWED_MEDIA_DOMAINS" in str(fetch_error(url, limits(policy), resolver))
    assert "could not be resolved" in str(
        fetch_error(routes.url("/stay", host="img.example.com"), limits(policy), resolver)
    )
    assert routes.hits == {"/img.png": 1, "/away": 1, "/stay": 1}
    assert resolver.calls == [("img.example.com", routes.port)] * 3 + [("cdn.img.example.com", routes.port)]


# ---- https: SNI and certificate checked against the original name ----------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=images.example.com"]
    command += ["-addext", "subjectAltName=DNS:images.example.com"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_routes(certificate: tuple[Path, Path]) -> Iterator[RouteServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = RouteServer(tls=context)
    yield server
    server.close()


def test_https_uses_the_original_name_for_sni_and_certificate(
    tls_routes: RouteServer,
    certificate: tuple[Path, Path],
    connections: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls_routes.add("/img.png")
    resolver = FakeDnsResolver({"images.example.com": ["127.0.0.1"], "other.example.com": ["127.0.0.1"]})
    vouch_for(monkeypatch, "images.example.com", "127.0.0.1")
    trust = ssl.create_default_context(cafile=str(certificate[0]))

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=trust)

    url = tls_routes.url("/img.png", host="images.example.com", scheme="https")
    assert fetch(url, limits(UrlPolicy()), resolver, client) == PNG
    assert connections == [("127.0.0.1", tls_routes.port)]
    assert tls_routes.server_names == ["images.example.com"]
    assert tls_routes.hosts == [f"images.example.com:{tls_routes.port}"]

    # A name the certificate does not cover fails verification (private allowed so the guard lets it through).
    wrong = tls_routes.url("/img.png", host="other.example.com", scheme="https")
    with pytest.raises(ApiError, match="could not fetch the URL"):
        fetch(wrong, limits(), resolver, client)
    assert tls_routes.server_names[-1] == "other.example.com"
    assert tls_routes.hits == {"/img.png": 1}


# ---- file:// ---------------------------------------------------------------------------------------------------


@pytest.fixture
def media_folder(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "cat.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    return root


def test_file_url_inside_the_allowed_folder(media_folder: Path) -> None:
    policy = UrlPolicy(local_root=str(media_folder))
    assert fetch(f"file://{media_folder}/sub/cat.png", limits(policy)) == PNG
    assert fetch(f"file://{media_folder}/sub/../sub/cat.png", limits(policy)) == PNG
    error = fetch_error(f"file://{media_folder}/sub/cat.png", limits(policy, max_bytes=len(PNG) - 1))
    assert f"over the {len(PNG) - 1} byte limit" in str(error)


@pytest.mark.parametrize("suffix", ["/../secret.png", "/sub/../../secret.png", "/escape.png", "/%2E%2E/secret.png"])
def test_file_url_outside_the_allowed_folder(media_folder: Path, suffix: str) -> None:
    error = fetch_error(f"file://{media_folder}{suffix}", limits(UrlPolicy(local_root=str(media_folder))))
    assert str(error) == f"{PARAM}: the file is outside ALLOWED_LOCAL_MEDIA_PATH"


def test_file_urls_refused_without_a_folder(media_folder: Path) -> None:
    error = fetch_error(f"file://{media_folder}/sub/cat.png", limits(PRIVATE_OK))
    assert "file:// URLs are not allowed (set ALLOWED_LOCAL_MEDIA_PATH" in str(error)


def test_missing_file_says_nothing_more(media_folder: Path) -> None:
    error = fetch_error(f"file://{media_folder}/nope.png", limits(UrlPolicy(local_root=str(media_folder))))
    assert str(error) == f"{PARAM}: the file could not be read"


# ---- the SSRF suite, through the real HTTP endpoint ---------------------------------------------------------------


HOSTILE_URLS = [
    "http://localhost:{port}/x.png",
    "HTTP://LOCALHOST.:{port}/x.png",
    "http://127.0.0.1:{port}/x.png",
    "https://127.0.0.1:{port}/x.png",
    "http://127.1:{port}/x.png",
    "http://2130706433:{port}/x.png",
    "http://0x7f000001:{port}/x.png",
    "http://0x7f.1:{port}/x.png",
    "http://0177.0.0.1:{port}/x.png",
    "http://0.0.0.0:{port}/x.png",
    "http://[::1]:{port}/x.png",
    "http://[::ffff:127.0.0.1]:{port}/x.png",
    "http://[::ffff:7f00:1]:{port}/x.png",
    "http://[64:ff9b::7f00:1]:{port}/x.png",
    "http://[2002:7f00:1::1]:{port}/x.png",
    "http://10.0.0.1:{port}/x.png",
    "http://192.168.1.1:{port}/x.png",
    "http://172.16.0.1:{port}/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1:{port}/x.png",
    "http://[fe80::1]:{port}/x.png",
    "http://[fc00::1]:{port}/x.png",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://images.example.com:{port}/x.png",  # the patched resolver says 127.0.0.1
    "http://metadata.example.com/latest/meta-data/",  # the patched resolver says 169.254.169.254
    "http://mixed.example.com:{port}/x.png",  # one public and one loopback answer
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "gopher://127.0.0.1:{port}/_GET%20/x.png",
    "dict://127.0.0.1:{port}/",
    "http://127.0.0.1:{port}\\@example.com/x.png",
    "http://example.com@127.0.0.1:{port}/x.png",
    "http://example.com:{port}#@127.0.0.1/x.png",  # fragment trick: resolves example.com (unknown here) only
    "http://127.0.0.1:{port}%2F@example.com/",
    "http://127.0.0.1\t:{port}/x.png",
]
TEST_DNS = {
    "images.example.com": ["127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
}


@pytest.fixture
def guarded_client(make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The real app with the default (safe) URL settings, and a resolver that never leaves this machine."""
    system = url_guard.resolve_host

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host == "localhost":
            return await system(host, port)
        if host in TEST_DNS:
            return TEST_DNS[host]
        raise OSError("unknown host in the test")

    monkeypatch.setattr(url_guard, "resolve_host", resolve)
    return make_client(allow_private_media_urls=False)


def embed_error(client: TestClient, url: str) -> dict[str, Any]:
    response = client.post("/v1/embeddings", json={"input": [{"type": "image", "data": url}]})
    assert response.status_code == 400, (url, response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == "input[0]", url
    assert error["code"] == "media_fetch", (url, error)
    assert error["message"].startswith("input[0]: "), url
    return error


def test_hostile_urls_are_refused_before_any_connection(
    guarded_client: TestClient, media_server: MediaServer, connections: list[tuple[str, int]]
) -> None:
    assert len(HOSTILE_URLS) >= 15
    port = media_server.httpd.server_address[1]
    for path in ("/x.png", "/", "/latest/meta-data/"):
        media_server.add(path, PNG)
    for template in HOSTILE_URLS:
        url = template.format(port=port)
        error = embed_error(guarded_client, url)
        for leaked in ("127.0.0.1", "169.254", "93.184", "::1", "/etc/"):
            assert leaked not in error["message"], (url, error["message"])
    assert media_server.hits == {}
    assert connections == []


def test_non_public_refusal_message_over_http(guarded_client: TestClient) -> None:
    error = embed_error(guarded_client, "http://images.example.com/x.png")
    assert error["message"] == (
        "input[0]: the URL's host resolves to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"
    )
    literal = embed_error(guarded_client, "http://169.254.169.254/latest/meta-data/")
    assert literal["message"] == (
        "input[0]: the URL points to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/secret",
        "//127.0.0.1:{port}/secret",
        "http://localhost:{port}/secret",
        "http://2130706433:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://images.example.com:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ],
)
def test_redirect_from_an_allowed_host_to_a_private_one(
    guarded_client: TestClient,
    routes: RouteServer,
    connections: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
) -> None:
    """cdn.example.com stands for a public CDN: it resolves to the test server, vouched public for that name only."""
    monkeypatch.setitem(TEST_DNS, "cdn.example.com", ["127.0.0.1"])
    vouch_for(monkeypatch, "cdn.example.com", "127.0.0.1")
    routes.add("/secret")
    routes.redirect("/start.png", target.format(port=routes.port))
    error = embed_error(guarded_client, routes.url("/start.png", host="cdn.example.com"))
    assert "a redirect was refused" in error["message"]
    assert routes.hits == {"/start.png": 1}
    assert "/secret" not in routes.hits
    assert routes.hosts == [f"cdn.example.com:{routes.port}"]
    assert connections == [("127.0.0.1", routes.port)]


def test_vouched_host_really_fetches(
    guarded_client: TestClient, routes: RouteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: without the hostile redirect the same set-up embeds the image."""
    monkeypatch.setitem(TEST_DNS, "cdn.example.com", ["127.0.0.1"])
    vouch_for(monkeypatch, "cdn.example.com", "127.0.0.1")
    routes.redirect("/start.png", "/cat.png")
    routes.add("/cat.png")
    url = routes.url("/start.png", host="cdn.example.com")
    response = guarded_client.post("/v1/embeddings", json={"input": [{"type": "image", "data": url}]})
    assert response.status_code == 200, response.text
    assert routes.hits == {"/start.png": 1, "/cat.png": 1}


# ---- the settings, through the real HTTP endpoint ----------------------------------------------------------------


def test_allowed_media_domains_setting(make_client: Callable[..., TestClient], media_server: MediaServer) -> None:
    client = make_client(allowed_media_domains="example.com, images.test")
    url = media_server.add("/cat.png", PNG)
    error = embed_error(client, url)
    assert "not in ALLOWED_MEDIA_DOMAINS" in error["message"]
    assert media_server.hits == {}


def test_allow_private_media_urls_setting(make_client: Callable[..., TestClient], media_server: MediaServer) -> None:
    url = media_server.add("/cat.png", PNG)
    assert "non-public" in embed_error(make_client(allow_private_media_urls=False), url)["message"]
    response = make_client(allow_private_media_urls=True).post(
        "/v1/embeddings", json={"input": [{"type": "image", "data": url}]}
    )
    assert response.status_code == 200, response.text
    assert media_server.hits == {"/cat.png": 1}
    # the parse rules still apply in private mode
    assert "dotted-decimal" in embed_error(make_client(), url.replace("127.0.0.1", "2130706433"))["message"]


def test_max_redirects_setting(make_client: Callable[..., TestClient], routes: RouteServer) -> None:
    routes.redirect("/r1", "/r2")
    routes.redirect("/r2", "/cat.png")
    routes.add("/cat.png")
    assert "more than 1 times" in embed_error(make_client(max_redirects=1), routes.url("/r1"))["message"]
    ok = make_client(max_redirects=2).post(
        "/v1/embeddings", json={"input": [{"type": "image", "data": routes.url("/r1")}]}
    )
    assert ok.status_code == 200, ok.text


def test_local_media_path_setting(make_client: Callable[..., TestClient], media_folder: Path) -> None:
    inside = f"file://{media_folder}/sub/cat.png"
    assert "set ALLOWED_LOCAL_MEDIA_PATH" in embed_error(make_client(), inside)["message"]
    client = make_client(allowed_local_media_path=str(media_folder))
    response = client.post("/v1/embeddings", json={"input": [{"type": "image", "data": inside}]})
    assert response.status_code == 200, response.text
    for outside in (f"file://{media_folder}/../secret.png", f"file://{media_folder}/escape.png", "file:///etc/passwd"):
        assert "outside ALLOWED_LOCAL_MEDIA_PATH" in embed_error(client, outside)["message"]
    small = make_client(allowed_local_media_path=str(media_folder), max_image_bytes=len(PNG) - 1)
    assert "byte limit" in embed_error(small, inside)["message"]


# ---- fetch slots: bounded in front of the pool, fair between requests, cheap to cancel --------------------------


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_freed_slot_goes_to_the_request_with_the_fewest_fetches_in_flight() -> None:
    async def go() -> None:
        slots = FetchSlots(2)
        busy, newcomer = slots.share(), slots.share()
        started: list[str] = []
        gates: dict[str, asyncio.Event] = {}

        async def one(share: FetchShare, name: str) -> None:
            gates[name] = asyncio.Event()
            async with share.slot():
                started.append(name)
                await gates[name].wait()

        tasks = [asyncio.create_task(one(busy, f"busy{n}")) for n in range(5)]
        await settle()
        tasks.append(asyncio.create_task(one(newcomer, "new")))
        await settle()
        assert started == ["busy0", "busy1"]
        gates["busy0"].set()
        await settle()
        assert started[-1] == "new"  # not busy2, although it queued first
        gates["busy1"].set()
        await settle()
        assert started[-1] == "busy2"  # now the busy request has fewer in flight
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*tasks)
        assert slots.in_flight == 0

    asyncio.run(go())


def test_cancelling_thousands_of_queued_fetches_is_cheap() -> None:
    async def go() -> float:
        slots = FetchSlots(4)
        share = slots.share()
        hold = asyncio.Event()

        async def one() -> None:
            async with share.slot():
                await hold.wait()

        tasks = [asyncio.create_task(one()) for _ in range(10_000)]
        await settle()
        assert slots.in_flight == 4
        started = time.perf_counter()
        for task in tasks[4:]:
            task.cancel()
        await asyncio.gather(*tasks[4:], return_exceptions=True)
        seconds = time.perf_counter() - started
        hold.set()
        await asyncio.gather(*tasks[:4])
        assert slots.in_flight == 0 and share.active == 0
        async with share.slot():
            assert slots.in_flight == 1
        return seconds

    assert asyncio.run(go()) < 2.0  # linear, like asyncio.Semaphore (about 0.1 s here); httpcore's queue took minutes


def test_a_slot_granted_to_a_cancelled_waiter_is_handed_back() -> None:
    async def go() -> None:
        slots = FetchSlots(1)
        share = slots.share()
        held = share.slot()
        await held.__aenter__()

        async def waiter() -> None:
            async with share.slot():
                raise AssertionError("a cancelled waiter ran")

        task = asyncio.create_task(waiter())
        await settle()
        await held.__aexit__(None, None, None)  # grants the slot to the waiter...
        task.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert slots.in_flight == 0

    asyncio.run(go())


class CountingServer(_Server):
    """Answers every GET with PNG after `delay`; records the most requests it served at once."""

    def __init__(self, delay: float) -> None:
        self.current = self.peak = self.hits = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with lock:
                    server.hits += 1
                    server.current += 1
                    server.peak = max(server.peak, server.current)
                time.sleep(delay)
                with lock:
                    server.current -= 1
                status = 404 if self.path.startswith("/missing") else 200
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    def image(self, n: int, path: str = "/img") -> dict[str, Any]:
        return {"type": "image", "data": f"http://127.0.0.1:{self.httpd.server_address[1]}{path}/{n}.png"}


def resolver(client: httpx.AsyncClient, total: int, per_request: int) -> MediaResolver:
    fetch_limits = limits(max_in_flight=total, max_in_flight_per_request=per_request)
    return MediaResolver(MediaFetcher(client, fetch_limits), MediaLimits())


def test_fetches_are_bounded_per_request_and_in_total() -> None:
    with CountingServer(delay=0.1) as server:

        async def go() -> None:
            async with media_client(limits(max_in_flight=3)) as client:
                media = resolver(client, total=3, per_request=2)
                items = await media.resolve(parse_input([server.image(n) for n in range(8)], max_items=100))
                assert len(items) == 8 and all(len(item.images) == 1 for item in items)
                assert server.peak == 2
                server.peak = 0
                requests = [parse_input([server.image(n) for n in range(8)], max_items=100) for _ in range(3)]
                await asyncio.gather(*(media.resolve(specs) for specs in requests))
                assert server.peak == 3

        asyncio.run(go())


def test_the_first_failure_stops_a_request_without_starting_its_other_fetches() -> None:
    with CountingServer(delay=0.2) as server:

        async def go() -> None:
            async with media_client(limits()) as client:
                media = resolver(client, total=64, per_request=2)
                specs = parse_input(
                    [server.image(0, "/missing"), *(server.image(n) for n in range(200))], max_items=300
                )
                with pytest.raises(ApiError) as caught:
                    await media.resolve(specs)
                assert caught.value.param == "input[0]"
                assert media.fetcher.slots.in_flight == 0

        started = time.perf_counter()
        asyncio.run(go())
        assert time.perf_counter() - started < 2.0
        assert server.hits <= 4  # the failing fetch and the few running beside it, not 200


def test_media_caps_refuse_before_any_fetch(make_client: Callable[..., TestClient], media_server: MediaServer) -> None:
    url = media_server.add("/cap.png", PNG)
    client = make_client(max_media_per_item=2, max_media_per_request=3)
    part = {"type": "image_url", "image_url": {"url": url}}
    response = client.post("/v1/embeddings", json={"input": ["text", [part, part, part]]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "input[1]"
    response = client.post("/v1/embeddings", json={"input": [[part, part], part, [part]]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "input[2]"
    assert media_server.hits == {}
    assert client.post("/v1/embeddings", json={"input": [[part, part], part]}).status_code == 200
