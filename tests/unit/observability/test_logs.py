"""Request ids, the per-request log line, text and JSON formats, and what must never be logged."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from embedding_api.observability.logs import (
    ACCESS_LOGGER,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    request_id_from,
)
from tests.conftest import b64, image_bytes, make_image

SECRET_KEY = "sk-live-7f3a9c2e-do-not-log"
SECRET_TEXT = "the walrus sings at midnight 4815162342"
FIELDS = {"request_id", "method", "route", "status", "model", "items", "tokens", "ms"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER]


def line_for(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, object]:
    (record,) = [r for r in access_records(caplog) if r.fields["request_id"] == request_id]  # type: ignore[attr-defined]
    fields: dict[str, object] = record.fields  # type: ignore[attr-defined]
    return fields


# ---- request ids --------------------------------------------------------------------------------------------


def test_an_incoming_request_id_is_kept_and_echoed(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "hi"}, headers={"X-Request-Id": "abc-123.x:y_z"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123.x:y_z"


def test_a_request_id_is_made_when_none_is_sent(client: TestClient) -> None:
    first = client.get("/health").headers["x-request-id"]
    second = client.get("/health").headers["x-request-id"]
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


def test_request_ids_are_sanitised() -> None:
    assert request_id_from("ok-1") == "ok-1"
    assert request_id_from("a b\n<script>") == "abscript"
    assert request_id_from("x" * 500) == "x" * 128
    made = request_id_from("\n\r<>")
    assert len(made) == 32 and made.isalnum()
    assert len(request_id_from(None)) == 32


@pytest.mark.parametrize(
    ("method", "path", "json", "status"),
    [
        ("POST", "/v1/embeddings", {"input": []}, 400),
        ("GET", "/no/such/route", None, 404),
        ("GET", "/v1/models/other-model", None, 404),
    ],
)
def test_errors_carry_the_request_id(client: TestClient, method: str, path: str, json: object, status: int) -> None:
    response = client.request(method, path, json=json, headers={"X-Request-Id": "err-1"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "err-1"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unauthorised_answers_carry_the_request_id(client: TestClient) -> None:
    del client.headers["Authorization"]
    response = client.post("/v1/embeddings", json={"input": "x"}, headers={"X-Request-Id": "who-are-you"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "who-are-you"
    made = client.post("/v1/embeddings", json={"input": "x"})
    assert len(made.headers["x-request-id"]) == 32


def test_unexpected_errors_answer_500_with_the_id_and_log_no_message(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]

    async def boom() -> None:
        raise RuntimeError(f"failed on {SECRET_TEXT}")

    app.add_api_route("/boom", boom)
    caplog.set_level(logging.DEBUG)
    response = client.get("/boom", headers={"X-Request-Id": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    assert response.json()["error"]["type"] == "server_error"
    assert SECRET_TEXT not in caplog.text
    assert "RuntimeError" in caplog.text
    assert line_for(caplog, "boom-1")["status"] == 500


# ---- the per-request line and redaction ---------------------------------------------------------------------


def test_the_request_line_has_its_fields(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    image = b64(image_bytes(make_image(32, 32, seed=5)))
    body = {"input": ["a", "b", {"type": "image", "data": image}, ["c", {"type": "image", "data": image}]]}
    response = client.post("/v1/embeddings", json=body, headers={"X-Request-Id": "line-1"})
    assert response.status_code == 200
    fields = line_for(caplog, "line-1")
    assert set(fields) == FIELDS
    assert fields["method"] == "POST"
    assert fields["route"] == "/v1/embeddings"
    assert fields["status"] == 200
    assert fields["model"] == "Qwen3-VL-Embedding-2B"
    assert fields["items"] == {"fused": 1, "image": 1, "text": 2}
    assert fields["tokens"] == response.json()["usage"]["prompt_tokens"]
    assert isinstance(fields["ms"], float) and fields["ms"] > 0
    (record,) = [r for r in access_records(caplog) if r.fields["request_id"] == "line-1"]  # type: ignore[attr-defined]
    assert "request_id=line-1" in record.getMessage()
    assert "model=Qwen3-VL-Embedding-2B items=fused:1,image:1,text:2" in record.getMessage()


def test_keys_texts_and_images_never_reach_the_logs(
    make_client: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(api_key=SECRET_KEY)
    client.headers["Authorization"] = f"Bearer {SECRET_KEY}"
    image = b64(image_bytes(make_image(40, 40, seed=9)))
    caplog.set_level(logging.DEBUG)
    ok = client.post("/v1/embeddings", json={"input": [SECRET_TEXT, {"type": "image", "data": image}]})
    assert ok.status_code == 200
    bad = client.post("/v1/embeddings", json={"input": [SECRET_TEXT, {"type": "image", "data": image[:-40] + "!!"}]})
    assert bad.status_code == 400
    invalid = client.post("/v1/embeddings", json={"input": SECRET_TEXT, "dimensions": SECRET_TEXT})
    assert invalid.status_code == 400
    wrong_key = client.post(
        "/v1/embeddings", json={"input": SECRET_TEXT}, headers={"Authorization": f"Bearer {SECRET_KEY}-wrong"}
    )
    assert wrong_key.status_code == 401
    upload = client.post("/embed/image", files={"file": ("x.png", b"not an image " + SECRET_TEXT.encode())})
    assert upload.status_code == 400

    assert len(access_records(caplog)) >= 5
    secrets = (SECRET_KEY, SECRET_TEXT, image, image[100:140], "walrus")
    text_formatter, json_formatter = TextFormatter(), JsonFormatter()
    for record in caplog.records:
        rendered = [
            record.getMessage(),
            repr(record.__dict__),
            text_formatter.format(record),
            json_formatter.format(record),
        ]
        for secret in secrets:
            assert not any(secret in line for line in rendered), (secret, record.name)


def test_tracebacks_keep_frames_but_withhold_messages(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("embedding_api.tests")
    caplog.set_level(logging.ERROR)
    try:
        try:
            raise KeyError(SECRET_TEXT)
        except KeyError as inner:
            raise ValueError(SECRET_TEXT) from inner
    except ValueError:
        logger.exception("it failed")
    (record,) = caplog.records
    for formatter in (TextFormatter(), JsonFormatter()):
        output = formatter.format(record)
        assert SECRET_TEXT not in output
        assert "ValueError" in output and "KeyError" in output
        assert "test_tracebacks_keep_frames_but_withhold_messages" in output


# ---- formats ------------------------------------------------------------------------------------------------


def test_json_format_writes_one_object_per_line(client: TestClient, restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    client.post("/v1/embeddings", json={"input": ["x", "y"]}, headers={"X-Request-Id": "json-1"})
    logging.getLogger("embedding_api.tests").info("plain %s", "message")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    request_line = next(line for line in lines if line.get("request_id") == "json-1")
    assert request_line.keys() >= FIELDS
    assert request_line["items"] == {"text": 2}
    assert request_line["level"] == "info" and request_line["logger"] == ACCESS_LOGGER
    assert any(line["message"] == "plain message" for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)


def test_text_format_is_the_default_and_reconfiguring_replaces_the_handler(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", stream=first)
    configure_logging("warning", "text", stream=second)
    logger = logging.getLogger("embedding_api.tests")
    logger.info("hidden")
    logger.warning("shown %d", 1)
    assert first.getvalue() == ""
    assert "WARNING embedding_api.tests: shown 1" in second.getvalue()
    assert not second.getvalue().lstrip().startswith("{")
