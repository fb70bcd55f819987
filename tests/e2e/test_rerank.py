"""`/v1/rerank` on a live server beside an embedding model: Cohere's and TEI's request shapes, scores equal to the
recipe, errors in our shape, and the `cohere` SDK pointed at the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest

from tests.conftest import API_KEY, b64, image_bytes, make_image
from tests.support.families import qwen3_reranker_scores
from tests.support.live import Server
from tests.support.reference_recipe import RefItem
from tests.support.reference_reranker import reference_rerank

pytestmark = pytest.mark.slow
QUERY = "what is a cat"
DOCUMENTS = ["a cat is a small furry animal", "the stock market fell", "cats purr", "x"]
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, family_dirs: dict[str, Path]) -> Iterator[Server]:
    models = f"vl={tiny_model_dir},rr={family_dirs['vl_reranker']},qr={family_dirs['qwen3_reranker']}"
    with Server(models=models) as running:
        yield running


def _rerank(server: Server, body: dict[str, object], path: str = "/v1/rerank") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=HEADERS, timeout=60)


@pytest.fixture(scope="module")
def expected(family_dirs: dict[str, Path]) -> np.ndarray:
    return reference_rerank(family_dirs["vl_reranker"], RefItem(texts=[QUERY]), [RefItem(texts=[d]) for d in DOCUMENTS])


def test_results_are_sorted_scores_equal_to_the_recipe(server: Server, expected: np.ndarray) -> None:
    answer = _rerank(server, {"model": "rr", "query": QUERY, "documents": DOCUMENTS, "return_documents": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "rr" and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}


def test_top_n_and_the_aliases(server: Server, expected: np.ndarray) -> None:
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        results = _rerank(server, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}, path).json()["results"]
        assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable")[:2])
        assert "document" not in results[0]


def test_tei_shape(server: Server, expected: np.ndarray) -> None:
    answer = _rerank(server, {"query": QUERY, "texts": DOCUMENTS, "return_text": True, "raw_scores": True}).json()
    assert isinstance(answer, list) and len(answer) == len(DOCUMENTS)
    logits = np.log(expected / (1 - expected))
    for row in answer:
        assert row["score"] == pytest.approx(float(logits[row["index"]]), abs=1e-3)
        assert row["text"] == DOCUMENTS[row["index"]]


def test_images_on_either_side(server: Server, family_dirs: dict[str, Path]) -> None:
    image = make_image(48, 40, seed=4)
    documents = [{"type": "image", "data": b64(image_bytes(image))}, "a photo of a dog"]
    answer = _rerank(server, {"query": QUERY, "documents": documents})
    assert answer.status_code == 200, answer.text
    scores = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    reference = reference_rerank(
        family_dirs["vl_reranker"],
        RefItem(texts=[QUERY]),
        [RefItem(images=[image]), RefItem(texts=["a photo of a dog"])],
    )
    assert [scores[0], scores[1]] == pytest.approx(reference.tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "fragment"),
    [
        (
            "/v1/rerank",
            {"model": "vl", "query": "q", "documents": ["d"]},
            400,
            "model",
            "served models that rerank: rr, qr",
        ),
        ("/v1/embeddings", {"model": "rr", "input": "q"}, 400, "model", "served models that embed: vl"),
        ("/v1/rerank", {"query": "q", "documents": ["ok", {"type": "image", "data": "!!"}]}, 400, "documents[1]", ""),
        ("/v1/rerank", {"query": "q", "documents": []}, 400, "documents", "non-empty"),
        ("/v1/rerank", {"query": "q"}, 400, "documents", "required"),
    ],
)
def test_errors_name_the_field(
    server: Server, path: str, body: dict[str, object], status: int, param: str, fragment: str
) -> None:
    answer = httpx.post(f"{server.url}{path}", json=body, headers=HEADERS, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert fragment in error["message"]


def test_too_many_documents_is_a_400(tiny_model_dir: Path, family_dirs: dict[str, Path]) -> None:
    with Server(models=f"rr={family_dirs['vl_reranker']}", max_rerank_documents=3) as running:
        answer = _rerank(running, {"query": "q", "documents": ["a", "b", "c", "d"]})
        assert answer.status_code == 400
        assert "MAX_RERANK_DOCUMENTS" in answer.json()["error"]["message"]


def test_the_cohere_sdk_reranks_unchanged(server: Server, expected: np.ndarray) -> None:
    client = cohere.Client(api_key=API_KEY, base_url=server.url)
    response = client.rerank(model="rr", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in response.results] == list(np.argsort(-expected, kind="stable")[:3])
    for result in response.results:
        assert result.relevance_score == pytest.approx(float(expected[result.index]), abs=1e-5)
    v2 = cohere.ClientV2(api_key=API_KEY, base_url=server.url)
    response2 = v2.rerank(model="rr", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in response2.results] == list(np.argsort(-expected, kind="stable"))


def test_the_text_reranker_beside_the_vl_one(server: Server, family_dirs: dict[str, Path]) -> None:
    expected = qwen3_reranker_scores(family_dirs["qwen3_reranker"], [(QUERY, document) for document in DOCUMENTS])
    answer = _rerank(server, {"model": "qr", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    scores = {row["index"]: row["relevance_score"] for row in answer.json()["results"]}
    assert [scores[i] for i in range(len(DOCUMENTS))] == pytest.approx(expected.tolist(), abs=1e-5)
    image = {"type": "image", "data": b64(image_bytes(make_image()))}
    refused = _rerank(server, {"model": "qr", "query": QUERY, "documents": [image]})
    assert refused.status_code == 400
