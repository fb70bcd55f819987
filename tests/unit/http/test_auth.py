"""API keys: the full route x header matrix, public routes, several keys, auth off, and the helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from embedding_api.http.auth import KeyChecker, presented_key
from tests.conftest import API_KEY

MODEL = "Qwen3-VL-Embedding-2B"
ROUTES: list[tuple[str, str, int]] = [  # method, path, status with a good key
    ("POST", "/v1/embeddings", 200),
    ("GET", "/v1/models", 200),
    ("GET", f"/v1/models/{MODEL}", 200),
    ("GET", "/v1/unknown", 404),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]
BAD_HEADERS: dict[str, dict[str, str]] = {
    "no-key": {},
    "wrong-bearer": {"Authorization": "Bearer wrong-key"},
    "wrong-bare": {"Authorization": "wrong-key"},
    "wrong-x-api-key": {"X-API-Key": "wrong-key"},
    "empty-bearer": {"Authorization": "Bearer "},
    "other-scheme": {"Authorization": f"Basic {API_KEY}"},
    "key-prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"},
}
GOOD_HEADERS: dict[str, dict[str, str]] = {
    "bearer": {"Authorization": f"Bearer {API_KEY}"},
    "bearer-lowercase": {"Authorization": f"bearer {API_KEY}"},
    "bare": {"Authorization": API_KEY},
    "x-api-key": {"X-API-Key": API_KEY},
    "x-api-key-over-a-dummy-bearer": {"X-API-Key": API_KEY, "Authorization": "Bearer sk-dummy"},
}


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Response:
    body: dict[str, Any] | None = {"input": "hello", "model": MODEL} if method == "POST" else None
    return client.request(method, path, json=body, headers=headers)


def assert_unauthorized(response: Response) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert "X-API-Key" in error["message"] and "Bearer" in error["message"]
    assert API_KEY not in response.text


@pytest.fixture
def keyless(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of a server that wants API_KEY, sending no key by default."""
    client = make_client()
    client.headers.pop("Authorization")
    return client


@pytest.mark.parametrize(("method", "path", "_ok"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("headers", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_bad_or_missing_key_is_401_on_every_route(
    keyless: TestClient, method: str, path: str, _ok: int, headers: dict[str, str]
) -> None:
    assert_unauthorized(call(keyless, method, path, headers))


@pytest.mark.parametrize(("method", "path", "ok"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("headers", list(GOOD_HEADERS.values()), ids=list(GOOD_HEADERS))
def test_good_key_passes_on_every_route(
    keyless: TestClient, method: str, path: str, ok: int, headers: dict[str, str]
) -> None:
    response = call(keyless, method, path, headers)
    assert response.status_code == ok
    assert response.status_code != 401


def test_unknown_path_with_a_good_key_is_an_openai_404(keyless: TestClient) -> None:
    response = call(keyless, "GET", "/v1/unknown", GOOD_HEADERS["bearer"])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/health", "/docs", "/openapi.json"])
def test_public_routes_need_no_key(keyless: TestClient, path: str) -> None:
    response = keyless.get(path)
    assert response.status_code == 200
    assert response.status_code != 401


def test_public_routes_ignore_a_wrong_key(keyless: TestClient) -> None:
    assert keyless.get("/health", headers=BAD_HEADERS["wrong-bearer"]).status_code == 200


def test_only_the_exact_public_paths_are_public(keyless: TestClient) -> None:
    assert_unauthorized(keyless.get("/health/extra"))
    assert_unauthorized(keyless.get("/openapi.json.bak"))


@pytest.mark.parametrize("key", ["alpha", "beta"])
def test_each_of_several_keys_is_accepted(make_client: Callable[..., TestClient], key: str) -> None:
    client = make_client(api_key="alpha, beta")
    client.headers.pop("Authorization")
    for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": key}, {"X-API-Key": key}):
        assert client.get("/v1/models", headers=headers).status_code == 200
        assert call(client, "POST", "/v1/embeddings", headers).status_code == 200


def test_with_several_keys_others_are_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="alpha,beta")
    client.headers.pop("Authorization")
    for key in ("gamma", "alpha,beta", "alphabeta", API_KEY):
        assert_unauthorized(client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}))
    assert_unauthorized(client.get("/v1/models"))


@pytest.mark.parametrize(("method", "path", "ok"), ROUTES, ids=ROUTE_IDS)
def test_empty_api_key_turns_auth_off(make_client: Callable[..., TestClient], method: str, path: str, ok: int) -> None:
    client = make_client(api_key="")
    client.headers.pop("Authorization")
    assert call(client, method, path, {}).status_code == ok
    assert call(client, method, path, {"Authorization": "Bearer sk-anything"}).status_code == ok


# ---- KeyChecker and presented_key ------------------------------------------------------------------------------


def test_key_checker_without_keys_is_disabled() -> None:
    checker = KeyChecker(())
    assert not checker.enabled
    assert not checker.accepts("anything")
    assert not checker.accepts(None)


def test_key_checker_accepts_exactly_its_keys() -> None:
    checker = KeyChecker(("alpha", "beta-key"))
    assert checker.enabled
    assert checker.accepts("alpha")
    assert checker.accepts("beta-key")
    for presented in (None, "", "alph", "alpha ", "ALPHA", "beta", "beta-keys", "alphabeta-key"):
        assert not checker.accepts(presented), presented


def test_key_checker_handles_non_ascii() -> None:
    checker = KeyChecker(("clé-ünïcode",))
    assert checker.accepts("clé-ünïcode")
    assert not checker.accepts("cle-unicode")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"authorization": ""}, None),
        ({"authorization": "   "}, None),
        ({"authorization": "Bearer k1"}, "k1"),
        ({"authorization": "bearer k1"}, "k1"),
        ({"authorization": "BEARER   k1  "}, "k1"),
        ({"authorization": "k1"}, "k1"),
        ({"authorization": "  k1  "}, "k1"),
        ({"x-api-key": "k2"}, "k2"),
        ({"x-api-key": " k2 "}, "k2"),
        ({"x-api-key": "k2", "authorization": "Bearer k1"}, "k2"),
        ({"x-api-key": "", "authorization": "Bearer k1"}, "k1"),
        ({"authorization": "Basic abc"}, "Basic abc"),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(headers) == expected


# ---- non-ASCII keys: the header's bytes, as UTF-8 (and Latin-1) -------------------------------------------------


@pytest.mark.parametrize("key", ["clé-ünïcode", "clé-à", "ключ", "鍵-key"])
def test_a_non_ascii_key_works_sent_as_utf8(make_client: Callable[..., TestClient], key: str) -> None:
    client = make_client(api_key=key)
    client.headers.pop("Authorization")
    sent_as_utf8 = {b"Authorization": b"Bearer " + key.encode("utf-8")}
    assert client.post("/v1/embeddings", json={"input": "x"}, headers=sent_as_utf8).status_code == 200
    as_x_api_key = {b"X-API-Key": key.encode("utf-8")}
    assert client.post("/v1/embeddings", json={"input": "x"}, headers=as_x_api_key).status_code == 200
    wrong = {b"Authorization": b"Bearer " + (key[:-1] + "x").encode("utf-8")}
    assert_unauthorized(client.post("/v1/embeddings", json={"input": "x"}, headers=wrong))


def test_a_latin1_key_still_works_sent_as_latin1(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="clé-à")
    client.headers.pop("Authorization")
    sent_as_latin1 = {b"Authorization": b"Bearer " + "clé-à".encode("latin-1")}  # Python's requests does this
    assert client.post("/v1/embeddings", json={"input": "x"}, headers=sent_as_latin1).status_code == 200


def test_key_checker_compares_raw_bytes() -> None:
    checker = KeyChecker(("clé-à",))
    assert checker.accepts("clé-à".encode())
    assert checker.accepts("clé-à".encode("latin-1"))
    assert not checker.accepts("clé-à".encode()[:-1])  # 0xA0 is a byte of the key, not a blank to strip
    assert not checker.accepts(b"cle-a")


def test_presented_key_strips_only_http_blanks() -> None:
    raw_utf8 = "clé-à".encode().decode("latin-1")  # as the middleware sees the header: one character a byte
    assert presented_key({"authorization": f"Bearer {raw_utf8}"}) == raw_utf8
    assert presented_key({"x-api-key": f"\t{raw_utf8} "}) == raw_utf8
