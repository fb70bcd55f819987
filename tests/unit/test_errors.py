"""`embedding_api.errors`: the kind -> (status, type) table and the OpenAI error body, against literal values."""

from __future__ import annotations

import pytest

from embedding_api.errors import ERROR_TABLE, ApiError, ErrorKind, error_body

# What each kind must answer, written out by hand: (the kind's value, which is also the default `code`, HTTP status,
# OpenAI error `type`). Nothing here is read from the table under test.
EXPECTED: list[tuple[str, int, str]] = [
    ("invalid_request", 400, "invalid_request_error"),
    ("unsupported_input", 400, "invalid_request_error"),
    ("media_fetch", 400, "invalid_request_error"),
    ("media_decode", 400, "invalid_request_error"),
    ("payload_too_large", 413, "invalid_request_error"),
    ("request_timeout", 408, "invalid_request_error"),
    ("headers_too_large", 431, "invalid_request_error"),
    ("authentication", 401, "authentication_error"),
    ("model_not_found", 404, "invalid_request_error"),
    ("not_found", 404, "invalid_request_error"),
    ("method_not_allowed", 405, "invalid_request_error"),
    ("overloaded", 429, "rate_limit_error"),
    ("item_too_large", 422, "invalid_request_error"),
    ("not_ready", 503, "service_unavailable"),
    ("shutting_down", 503, "service_unavailable"),
    ("too_many_connections", 503, "service_unavailable"),
    ("timeout", 504, "timeout"),
    ("internal", 500, "server_error"),
]
IDS = [code for code, _, _ in EXPECTED]


def test_every_error_kind_has_an_expected_row() -> None:
    """A kind added without a row here (or a row whose kind is gone) fails, so every kind is pinned below."""
    assert sorted(kind.value for kind in ErrorKind) == sorted(IDS)
    assert len(ERROR_TABLE) == len(EXPECTED)


@pytest.mark.parametrize(("code", "status", "kind_type"), EXPECTED, ids=IDS)
def test_the_table_maps_each_kind_to_its_status_and_type(code: str, status: int, kind_type: str) -> None:
    assert ERROR_TABLE[ErrorKind(code)] == (status, kind_type)


@pytest.mark.parametrize(("code", "status", "kind_type"), EXPECTED, ids=IDS)
def test_error_bodies_have_exactly_four_keys(code: str, status: int, kind_type: str) -> None:
    kind = ErrorKind(code)
    assert error_body(kind, "something went wrong") == {
        "error": {"message": "something went wrong", "type": kind_type, "param": None, "code": code}
    }

    error = ApiError(kind, "m", param="input[1]", code="custom_code")
    assert error.status == status
    assert error.code == "custom_code"
    # the field is named once, in front of the message, by the body alone
    assert error.body() == {
        "error": {"message": "input[1]: m", "type": kind_type, "param": "input[1]", "code": "custom_code"}
    }
    assert error.message == "m"


@pytest.mark.parametrize(("code", "status", "kind_type"), EXPECTED, ids=IDS)
def test_the_code_defaults_to_the_kinds_value(code: str, status: int, kind_type: str) -> None:
    error = ApiError(ErrorKind(code), "m")
    assert (error.status, error.code, error.param, error.item_index) == (status, code, None, None)
    assert error.body()["error"]["code"] == code
