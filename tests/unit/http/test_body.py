"""`embedding_api.http.body`: counting JSON values before parsing (`count_json_values`), the MAX_JSON_VALUES
refusal, and the request field names of validation errors (`param_of`)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.http import body as request_body
from embedding_api.http.body import count_json_values, param_of, parse_body
from embedding_api.http.wire import EmbeddingRequest


def reference_count(raw: bytes) -> int:
    """`,` `:` `[` `{` outside strings, byte by byte (a backslash outside a string escapes a quote, as in the scan)."""
    total, in_string, escaped = 0, False, False
    for byte in raw:
        if escaped:
            escaped = False
            if not in_string and byte in b",:[{":
                total += 1
        elif byte == ord("\\"):
            escaped = True
        elif byte == ord('"'):
            in_string = not in_string
        elif not in_string and byte in b",:[{":
            total += 1
    return total


@pytest.mark.parametrize(
    "value",
    [
        {"input": "a, b: [c] {d}"},
        {"input": ['x\\"y,', "\\\\", ',\\\\\\",:'], "model": "m", "dimensions": 8},
        [[0], [1, 2], {"a": {"b": [3, {"c": ""}]}}],
        {"input": 'ünïcode, \u2028 "quoted" [x]'},
    ],
)
def test_count_matches_the_values_of_real_json(value: object) -> None:
    raw = json.dumps(value).encode()
    assert count_json_values(raw) == reference_count(raw)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_count_is_exact_across_chunk_edges(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(request_body, "_SCAN_CHUNK", chunk)
    rng = random.Random(chunk)
    alphabet = b'\\\\\\""",:[{ a'
    for _ in range(500):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert count_json_values(raw) == reference_count(raw), raw


def test_count_stops_past_the_limit() -> None:
    raw = b"[" + b"0," * 100_000 + b"0]"
    assert count_json_values(raw) == 100_001
    assert count_json_values(raw, limit=1000) > 1000


def test_parse_body_refuses_too_many_values_before_parsing() -> None:
    raw = b'{"input": [' + b'"a",' * 2000 + b'"a"]}'
    with pytest.raises(ApiError) as refused:
        parse_body(raw, EmbeddingRequest, max_values=1000)
    assert refused.value.kind is ErrorKind.PAYLOAD_TOO_LARGE
    assert "MAX_JSON_VALUES=1000" in str(refused.value)
    assert len(parse_body(raw, EmbeddingRequest, max_values=5000).input) == 2001  # type: ignore[arg-type]


def test_commas_inside_texts_do_not_count() -> None:
    raw = json.dumps({"input": "," * 50_000}).encode()
    assert count_json_values(raw) == 2  # the object's `{` and its one `:`
    assert parse_body(raw, EmbeddingRequest, max_values=1000).input == "," * 50_000


@pytest.mark.parametrize(
    ("location", "param"),
    [
        (("body", "input", "str"), "input"),
        (("body", "input", "list[any]"), "input"),
        (("body", "texts", 1), "texts[1]"),
        (("input", 3), "input[3]"),
        (("query", "limit"), "limit"),
        (("body",), None),
    ],
)
def test_param_of_uses_our_names(location: tuple[Any, ...], param: str | None) -> None:
    assert param_of(location) == param
