"""`embedding_api.media.url_guard`: the strict URL parse, address classes, the domain allow-list and local files."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from embedding_api.media.url_guard import (
    Hop,
    ParsedUrl,
    UrlGuard,
    UrlPolicy,
    UrlRefused,
    domain_allowed,
    embedded_ipv4,
    is_connectable_address,
    is_public_address,
    parse_domains,
    parse_url,
    read_local_file,
)
from tests.fakes import FakeDnsResolver


def refused(url: str) -> str:
    with pytest.raises(UrlRefused) as caught:
        parse_url(url)
    return str(caught.value)


# ---- parse_url: what is accepted ------------------------------------------------------------------------------


def test_plain_http_url() -> None:
    url = parse_url("http://images.example.com/cat.png?size=2#frag")
    assert (url.scheme, url.host, url.port, url.explicit_port, url.target, url.ip) == (
        "http",
        "images.example.com",
        80,
        False,
        "/cat.png?size=2",
        None,
    )
    assert url.authority == "images.example.com"
    assert url.url == "http://images.example.com/cat.png?size=2"


def test_https_with_port_case_and_trailing_dot() -> None:
    url = parse_url("HTTPS://CDN.Example.COM.:8443")
    assert (url.scheme, url.host, url.port, url.explicit_port, url.target) == (
        "https",
        "cdn.example.com",
        8443,
        True,
        "",
    )
    assert url.authority == "cdn.example.com:8443"
    assert url.url == "https://cdn.example.com:8443/"


def test_ip_literals() -> None:
    v4 = parse_url("http://93.184.216.34:81/a")
    assert v4.ip == ipaddress.IPv4Address("93.184.216.34") and v4.authority == "93.184.216.34:81"
    v6 = parse_url("http://[2606:4700:4700:0::1111]/a")
    assert v6.ip == ipaddress.IPv6Address("2606:4700:4700::1111")
    assert v6.host == "2606:4700:4700::1111" and v6.authority == "[2606:4700:4700::1111]"


def test_punycode_underscores_and_non_ascii_paths_are_fine() -> None:
    assert parse_url("https://xn--bcher-kva.example/").host == "xn--bcher-kva.example"
    assert parse_url("https://my_bucket.storage.example/a").host == "my_bucket.storage.example"
    assert parse_url("https://example.com/caf%C3%A9/ü.png").target == "/caf%C3%A9/ü.png"
    assert parse_url("https://example.com/a@b/c").target == "/a@b/c"  # '@' after the host is only a path


def test_file_url() -> None:
    url = parse_url("file:///srv/media/a%20b.png")
    assert (url.scheme, url.host, url.target) == ("file", "", "/srv/media/a%20b.png")


# ---- parse_url: what is refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "gopher://127.0.0.1:70/", "s3://bucket/key", "dict://x/", "ldap://x/"]
)
def test_other_schemes(url: str) -> None:
    assert "not supported; use http or https" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080\\@example.com/",
        "http://example.com\\@127.0.0.1/",
        "http:\\\\127.0.0.1\\x",
        "https://example.com/a\\b",
    ],
)
def test_backslashes(url: str) -> None:
    assert "backslash" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com@127.0.0.1/",
        "http://user:pass@example.com/",
        "http://@example.com/",
        "http://127.0.0.1:80@example.com/",
        "http://example.com:80@127.0.0.1:80/",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    assert "user name or password" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://exa mple.com/",
        "http://example.com/a b",
        "http://example.com/\ta",
        "http://127.0.0.1\n.example.com/",
        "http://example.com\r\nX-Injected: 1/",
        "http://example.com/\x00",
        "http://example.com/\x7f",
        "http://example.com/\u00a0",
        "http://example.com/\u200b",
        "http://example.com\u2028/",
        " http://example.com/",
    ],
)
def test_whitespace_and_control_characters(url: str) -> None:
    assert "spaces or control characters" in refused(url)


@pytest.mark.parametrize(
    "url",
    ["http://ex\u0430mple.com/", "http://bücher.example/", "http://\uff11\uff12\uff17.0.0.1/", "http://ℯxample.com/"],
)
def test_non_ascii_hosts(url: str) -> None:
    assert "ASCII" in refused(url)


@pytest.mark.parametrize("url", ["http:///a.png", "http://", "http://:80/", "https://?x", "http://./"])
def test_empty_host(url: str) -> None:
    assert "no host" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/",
        "http://127.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",
        "http://0177.1/",
        "http://127.0.0.01/",
        "http://256.0.0.1/",
        "http://1.2.3.4.5/",
        "http://example.123/",
        "http://example.0x1f/",
        "http://%31%32%37.0.0.1/",
    ],
)
def test_numeric_hosts_other_than_dotted_decimal(url: str) -> None:
    assert "dotted-decimal" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",
        "http://[::1]x/",
        "http://[fe80::1%25eth0]/",
        "http://[fe80::1%eth0]/",
        "http://[127.0.0.1]/",
        "http://[not-an-address]/",
    ],
)
def test_bad_ipv6_literals(url: str) -> None:
    assert "IPv6" in refused(url)


@pytest.mark.parametrize(
    "url", ["http://example.com:/", "http://example.com:0/", "http://example.com:65536/", "http://example.com:+80/"]
)
def test_bad_ports(url: str) -> None:
    assert "port" in refused(url)


@pytest.mark.parametrize(
    "url", ["http://exa%6dple.com/", "http://%6c%6fcalhost/", "http://a..b/", "http://-a.com/", "http://a!.com/"]
)
def test_bad_host_names(url: str) -> None:
    assert "not a valid host name" in refused(url)


@pytest.mark.parametrize("url", ["file://localhost/etc/passwd", "file://host/x", "file:relative", "file:///a?b"])
def test_bad_file_urls(url: str) -> None:
    refused(url)


def test_not_a_url() -> None:
    assert "not a valid URL" in refused("//example.com/a.png")


# ---- address classes -------------------------------------------------------------------------------------------

NON_PUBLIC = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "10.0.0.1",  # private
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # link-local, cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "0.0.0.0",  # unspecified / "this network"
    "0.1.2.3",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.2.1",  # documentation
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",  # benchmarking
    "192.0.0.8",  # IETF assignments
    "::1",  # IPv6 loopback
    "::",  # IPv6 unspecified
    "fe80::1",  # link-local
    "fc00::1",  # unique local
    "fd12:3456::1",
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "100::1",  # discard
    "::ffff:127.0.0.1",  # IPv4-mapped forms
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::8.8.8.8",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo (any)
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just outside 100.64/10
    "100.128.0.0",
    "172.15.255.255",  # just outside 172.16/12
    "172.32.0.0",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",  # mapped public IPv4
    "64:ff9b::808:808",  # NAT64 of a public IPv4
    "2002:808:808::1",  # 6to4 of a public IPv4
]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("::ffff:127.0.0.1", ["127.0.0.1"]),
        ("::127.0.0.1", ["127.0.0.1"]),
        ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
        ("2002:c0a8:101::1", ["192.168.1.1"]),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", ["65.54.227.120", "127.0.0.1"]),
        ("2606:4700:4700::1111", []),
        ("::1", []),
        ("8.8.8.8", []),
    ],
)
def test_embedded_ipv4_is_unwrapped(address: str, embedded: list[str]) -> None:
    assert [str(ip) for ip in embedded_ipv4(ipaddress.ip_address(address))] == embedded


@pytest.mark.parametrize(
    ("address", "connectable"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("169.254.169.254", True),
        ("fe80::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("255.255.255.255", False),
        ("::ffff:0.0.0.0", False),
    ],
)
def test_private_mode_still_refuses_unusable_addresses(address: str, connectable: bool) -> None:
    assert is_connectable_address(ipaddress.ip_address(address)) is connectable


# ---- the domain allow-list -------------------------------------------------------------------------------------


def test_parse_domains() -> None:
    assert parse_domains("") == ()
    assert parse_domains(" Example.com, *.cdn.net ,, .x.org., [::1], 10.0.0.1, example.com") == (
        "example.com",
        "cdn.net",
        "x.org",
        "::1",
        "10.0.0.1",
    )


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/a", True),
        ("https://EXAMPLE.com./a", True),
        ("https://img.example.com/a", True),
        ("https://a.b.example.com/a", True),
        ("https://evil-example.com/a", False),
        ("https://example.com.evil.net/a", False),
        ("https://notexample.com/a", False),
        ("https://example.co/a", False),
        ("https://com/a", False),
        ("http://10.0.0.1/a", True),
        ("http://110.0.0.1/a", False),
        ("http://[::1]/a", True),
        ("http://[::2]/a", False),
    ],
)
def test_domain_allow_list(url: str, allowed: bool) -> None:
    domains = parse_domains("example.com, 10.0.0.1, ::1")
    assert domain_allowed(parse_url(url), domains) is allowed


def test_ip_literals_do_not_match_by_suffix() -> None:
    assert not domain_allowed(parse_url("http://1.2.3.4/"), parse_domains("2.3.4, 3.4"))


def test_empty_allow_list_allows_every_host() -> None:
    assert domain_allowed(parse_url("https://anything.example/"), ())


# ---- UrlGuard.check ---------------------------------------------------------------------------------------------


def check(url: str, resolver: FakeDnsResolver, **policy: object) -> Hop:
    guard = UrlGuard(UrlPolicy(**policy), resolver)  # type: ignore[arg-type]
    return asyncio.run(guard.check(parse_url(url)))


def check_refused(url: str, resolver: FakeDnsResolver, **policy: object) -> str:
    with pytest.raises(UrlRefused) as caught:
        check(url, resolver, **policy)
    return str(caught.value)


def test_hop_connects_to_the_checked_address_with_the_original_name() -> None:
    resolver = FakeDnsResolver({"img.example.com": ["93.184.216.34", "2606:4700:4700::1111"]})
    hop = check("https://img.example.com:8443/a.png?x=1", resolver)
    assert resolver.calls == [("img.example.com", 8443)]
    assert hop.address == ipaddress.ip_address("93.184.216.34")
    assert hop.request_url == "https://93.184.216.34:8443/a.png?x=1"
    assert hop.headers == {"Host": "img.example.com:8443", "Connection": "close"}
    assert hop.extensions == {"sni_hostname": "img.example.com"}


def test_plain_http_hop_and_ipv6_address() -> None:
    hop = check("http://v6.example.com/", FakeDnsResolver({"v6.example.com": ["2606:4700:4700::1111"]}))
    assert hop.request_url == "http://[2606:4700:4700::1111]:80/"
    assert hop.headers == {"Host": "v6.example.com"}
    assert hop.extensions == {}


def test_ip_literals_are_not_resolved() -> None:
    resolver = FakeDnsResolver({})
    hop = check("https://93.184.216.34/a", resolver)
    assert resolver.calls == []
    assert hop.request_url == "https://93.184.216.34:443/a"
    assert hop.extensions == {}  # no SNI for an address; the certificate is checked against the address


def test_any_non_public_answer_refuses_the_host() -> None:
    resolver = FakeDnsResolver({"mixed.example.com": ["93.184.216.34", "10.0.0.1"]})
    message = check_refused("http://mixed.example.com/", resolver)
    assert message == "the URL's host resolves to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"
    assert "10.0.0.1" not in message and "93.184" not in message


def test_ip_literal_refusal_message() -> None:
    message = check_refused("http://169.254.169.254/latest/meta-data/", FakeDnsResolver({}))
    assert message == "the URL points to a non-public address (set ALLOW_PRIVATE_MEDIA_URLS=true to allow)"


def test_unresolvable_hosts() -> None:
    assert "could not be resolved" in check_refused("http://nowhere.example/", FakeDnsResolver({}))
    assert "could not be resolved" in check_refused("http://empty.example/", FakeDnsResolver({"empty.example": []}))
    assert "could not be resolved" in check_refused("http://junk.example/", FakeDnsResolver({"junk.example": ["x"]}))


def test_private_mode_allows_private_addresses_but_not_bad_urls() -> None:
    resolver = FakeDnsResolver({"nas.local": ["192.168.1.20"], "zero.local": ["0.0.0.0"]})
    assert check("http://nas.local/a.png", resolver, allow_private=True).request_url == "http://192.168.1.20:80/a.png"
    assert check("http://127.0.0.1:81/", resolver, allow_private=True).address == ipaddress.ip_address("127.0.0.1")
    assert "non-public" in check_refused("http://zero.local/", resolver, allow_private=True)
    assert "dotted-decimal" in refused("http://2130706433/")


def test_allow_list_is_checked_before_resolving() -> None:
    resolver = FakeDnsResolver({"other.net": ["93.184.216.34"]})
    message = check_refused("https://other.net/a", resolver, allowed_domains=("example.com",))
    assert message == "the URL's host is not in ALLOWED_MEDIA_DOMAINS"
    assert resolver.calls == []


def test_allowed_domain_must_still_resolve_publicly() -> None:
    resolver = FakeDnsResolver({"img.example.com": ["127.0.0.1"]})
    assert "non-public" in check_refused("https://img.example.com/a", resolver, allowed_domains=("example.com",))


def test_file_urls_are_not_hops() -> None:
    assert "not supported" in check_refused("file:///etc/passwd", FakeDnsResolver({}))


# ---- local files -----------------------------------------------------------------------------------------------


def local_file(url: str, root: Path | str) -> Path:
    return UrlGuard(UrlPolicy(local_root=str(root))).local_file(parse_url(url))


def test_file_urls_are_refused_without_a_root() -> None:
    with pytest.raises(UrlRefused, match="set ALLOWED_LOCAL_MEDIA_PATH"):
        UrlGuard(UrlPolicy()).local_file(parse_url("file:///etc/passwd"))


def test_files_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a b.png").write_bytes(b"png")
    assert local_file(f"file://{tmp_path}/sub/a%20b.png", tmp_path) == (tmp_path / "sub" / "a b.png").resolve()
    assert read_local_file(local_file(f"file://{tmp_path}/sub/a%20b.png", tmp_path), 3) == b"png"


@pytest.mark.parametrize(
    "suffix", ["/../outside.png", "/sub/../../outside.png", "/%2e%2e/outside.png", "", "/..", "/link.png", "/dirlink/x"]
)
def test_files_outside_the_root(tmp_path: Path, suffix: str) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"secret")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x").write_bytes(b"secret")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "dirlink").symlink_to(tmp_path / "outdir")
    with pytest.raises(UrlRefused, match="outside ALLOWED_LOCAL_MEDIA_PATH"):
        local_file(f"file://{root}{suffix}", root)


def test_prefix_sibling_is_outside(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media-private").mkdir()
    (tmp_path / "media-private" / "a.png").write_bytes(b"secret")
    with pytest.raises(UrlRefused, match="outside"):
        local_file(f"file://{tmp_path}/media-private/a.png", tmp_path / "media")


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.png").write_bytes(b"ok")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert local_file(f"file://{tmp_path}/alias/a.png", tmp_path / "alias") == (tmp_path / "real" / "a.png").resolve()


def test_read_local_file_limits(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    assert read_local_file(tmp_path / "a.bin", 100) == b"x" * 100
    with pytest.raises(UrlRefused, match="over the 99 byte limit"):
        read_local_file(tmp_path / "a.bin", 99)
    with pytest.raises(UrlRefused, match="could not be read"):
        read_local_file(tmp_path / "missing.bin", 100)
    with pytest.raises(UrlRefused, match="regular file"):
        read_local_file(tmp_path, 100)


def test_parsed_url_is_a_value() -> None:
    assert parse_url("http://a.example/x") == ParsedUrl("http", "a.example", 80, False, "/x", None)
