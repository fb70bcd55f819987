from __future__ import annotations

import base64

import numpy as np
import orjson

from embedding_api.http.encoding import embeddings_response, to_base64


def test_base64_is_little_endian_float32() -> None:
    vector = np.array([1.0, -2.5, 3.25e-8], dtype=np.float32)
    raw = base64.b64decode(to_base64(vector))
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), vector)
    big_endian = vector.astype(">f4")
    assert base64.b64decode(to_base64(big_endian)) == raw


def test_response_shape_and_float_round_trip() -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    body = orjson.loads(embeddings_response(vectors, encoding_format="float", model="m", prompt_tokens=7))
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_array_equal(np.array([d["embedding"] for d in body["data"]], dtype=np.float32), vectors)


def test_base64_response_decodes_to_the_same_vectors() -> None:
    vectors = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    body = orjson.loads(embeddings_response(vectors, encoding_format="base64", model="m", prompt_tokens=1))
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_array_equal(decoded, vectors)
