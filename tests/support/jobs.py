"""Bulk-job test helpers: a mixed input corpus with known bad rows, the server's own answers for it, and readers
for a job's Parquet output and errors file."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from tests.conftest import data_uri, image_bytes, make_image

WORDS = ["river", "stone", "cloud", "light", "paper", "music", "garden", "window", "letter", "morning", "cat", "sofa"]
JOB_INSTRUCTION = "Find the item that matches"
MAX_LENGTH = 512  # small, so that one row can be over it with truncate off


@dataclass
class Corpus:
    """A JSONL input: the good rows' inputs by id, and what each bad row must produce."""

    path: Path
    media: Path  # the folder file:// rows read below (ALLOWED_LOCAL_MEDIA_PATH)
    good: dict[str, Any] = field(default_factory=dict)
    # (id or None, line) -> the error code the errors file must give
    bad: dict[tuple[str | None, int], str] = field(default_factory=dict)
    # bad rows the service refuses: id -> the input, to ask the server for its error
    refused: dict[str, Any] = field(default_factory=dict)


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def mixed_corpus(folder: Path, count: int = 1000, seed: int = 0) -> Corpus:
    """`count` lines: texts of 1..150 words, data-URI images, fused text+image, {content, instruction}, text and
    image_url objects, file:// images, and 8 bad rows (bad JSON, no id, a repeated id, an undecodable image, a
    missing file, a text over MAX_LENGTH with truncate off, an empty text, token ids)."""
    rng = random.Random(seed)
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder / "input.jsonl", media)
    images = [data_uri(image_bytes(make_image(rng.randint(16, 80), rng.randint(16, 80), seed=k))) for k in range(40)]
    for k in range(5):
        (media / f"photo-{k}.png").write_bytes(image_bytes(make_image(40 + k, 30, seed=100 + k)))
    bad_at = {50: "json", 120: "no_id", 200: "duplicate", 333: "undecodable", 480: "missing_file"}
    bad_at |= {610: "too_long", 777: "empty", 901: "token_ids"}
    lines: list[str] = []
    for i in range(count):
        number = i + 1
        row_id: str | int = f"row-{i:04d}" if i % 97 else 100_000 + i  # a few integer ids
        kind = bad_at.get(i)
        if kind == "json":
            lines.append('{"id": "broken", "input": ')
            corpus.bad[(None, number)] = "invalid_json"
            continue
        if kind == "no_id":
            lines.append(json.dumps({"input": "a row without an id"}))
            corpus.bad[(None, number)] = "missing_id"
            continue
        if kind == "duplicate":
            lines.append(json.dumps({"id": "row-0001", "input": "the same id again"}))
            corpus.bad[("row-0001", number)] = "duplicate_id"
            continue
        bad_inputs: dict[str, Any] = {
            "undecodable": {"type": "image", "data": "data:image/png;base64,bm90IGFuIGltYWdl"},
            "missing_file": {"type": "image", "data": (media / "no-such-file.png").as_uri()},
            "too_long": " ".join(["river"] * (MAX_LENGTH * 3)),
            "empty": "",
            "token_ids": [1, 2, 3],
        }
        if kind is not None:
            value = bad_inputs[kind]
            lines.append(json.dumps({"id": row_id, "input": value}))
            corpus.refused[str(row_id)] = value
            corpus.bad[(str(row_id), number)] = ""  # the code is the server's, checked against its answer
            continue
        image = images[i % len(images)]
        shape = i % 10
        value: Any
        if shape <= 5:
            value = text(rng, 1, 150)
        elif shape == 6:
            value = {"type": "image", "data": image}
        elif shape == 7:
            value = [text(rng, 1, 30), {"type": "image", "data": image}]
        elif shape == 8:
            value = {"content": [text(rng, 1, 20), {"type": "image", "data": image}], "instruction": "Describe it"}
        elif i % 3 == 0:
            value = {"type": "text", "text": text(rng, 1, 40)}
        elif i % 3 == 1:
            value = {"type": "image_url", "image_url": {"url": image}}
        else:
            value = {"type": "image", "data": (media / f"photo-{i % 5}.png").as_uri()}
        lines.append(json.dumps({"id": row_id, "input": value}))
        corpus.good[str(row_id)] = value
    corpus.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


def http_vectors(client: TestClient, inputs: list[Any], chunk: int = 50, **body: Any) -> np.ndarray:
    """The server's vectors for these inputs (one each), asked in requests of `chunk` inputs."""
    rows: list[list[float]] = []
    for start in range(0, len(inputs), chunk):
        response = client.post("/v1/embeddings", json={"input": inputs[start : start + chunk], **body})
        assert response.status_code == 200, response.text
        rows.extend(item["embedding"] for item in response.json()["data"])
    return np.asarray(rows, dtype=np.float32)


def http_error(client: TestClient, value: Any, **body: Any) -> dict[str, Any]:
    """The server's error body for this one input."""
    response = client.post("/v1/embeddings", json={"input": [value], **body})
    assert response.status_code >= 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@dataclass
class Output:
    """A job's Parquet output, by id."""

    ids: list[str]
    vectors: dict[str, np.ndarray]
    models: set[str]
    dimensions: dict[str, int]
    tokens: dict[str, int]
    schema: Any


def read_output(path: Path) -> Output:
    table = pq.read_table(path).sort_by("id")
    ids = table.column("id").to_pylist()
    vectors = [np.asarray(v, dtype=np.float32) for v in table.column("vector").to_pylist()]
    return Output(
        ids=ids,
        vectors=dict(zip(ids, vectors, strict=True)),
        models=set(table.column("model").to_pylist()),
        dimensions=dict(zip(ids, table.column("dimensions").to_pylist(), strict=True)),
        tokens=dict(zip(ids, table.column("tokens").to_pylist(), strict=True)),
        schema=table.schema,
    )


def read_errors(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def without_param(message: str, param: str | None) -> str:
    """An error message without the `param: ` prefix the error body puts in front."""
    return message.removeprefix(f"{param}: ") if param else message
