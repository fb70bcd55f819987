"""The playground page driven end to end in a real headless Chromium against a real uvicorn server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from embedding_api.families.base import EmbeddingFamily
from tests.conftest import API_KEY, LiveServer, image_bytes, make_image, make_settings
from tests.support.paths import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


TEXTS = ["a cat sleeping on a sofa", "a red bicycle against a wall", "the quarterly financial report"]


def _browser(playwright: Any, user_data_dir: Path) -> Any:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    try:
        return playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
    except Exception as exc:
        pytest.skip(f"playwright could not launch {chromium}: {exc}")


def test_playground_in_a_browser(tiny_model_dir: Path, tiny_family: EmbeddingFamily, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    image_path = tmp_path / "noise.png"
    image_path.write_bytes(image_bytes(make_image(seed=3)))
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "playground.png"
    screenshot.unlink(missing_ok=True)

    with LiveServer(make_settings(tiny_model_dir), tiny_family) as server, sync_api.sync_playwright() as playwright:
        context = _browser(playwright, tmp_path / "profile")
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{server.url}/")
            assert page.title().startswith("Embedding playground")

            # a wrong key shows the server's OpenAI-shaped error
            page.fill("#api-key", "wrong-key")
            page.fill("#texts", "hello")
            page.click("#embed")
            page.wait_for_selector("#error:not([hidden])")
            assert "401" in page.inner_text("#error")
            assert "invalid_api_key" in page.inner_text("#error")

            page.fill("#api-key", API_KEY)
            page.fill("#texts", "\n".join(TEXTS))
            page.set_input_files("#image-input", str(image_path))
            page.wait_for_selector("#thumbs li")
            page.select_option("#instruction-preset", index=1)
            page.click("#embed")
            page.wait_for_selector("#grid .cell")
            assert page.is_hidden("#error")

            cells = page.eval_on_selector_all(
                "#grid .cell", "cs => cs.map(c => [+c.dataset.row, +c.dataset.col, +c.dataset.value, c.textContent])"
            )
            assert len(cells) == 16
            assert {(row, col) for row, col, _, _ in cells} == {(r, c) for r in range(4) for c in range(4)}
            for row, col, value, text in cells:
                assert -1.0 <= value <= 1.0
                assert abs(float(text) - value) <= 0.005
                if row == col:
                    assert text == "1.00"

            page.select_option("#query", "3")  # the image
            ranked = page.eval_on_selector_all("#ranking li", "ls => ls.map(l => +l.dataset.index)")
            assert sorted(ranked) == [0, 1, 2, 3]
            assert ranked[0] == 3  # the query itself, cosine 1
            labels = page.inner_text("#ranking")
            for text in TEXTS:
                assert text in labels
            assert "noise.png" in labels

            # a compact precision: bytes per vector saved, and each item's rank under it beside its float rank
            assert page.inner_text("#precision-info") == ""
            for precision, size in (("int8", 64), ("binary", 8)):
                page.select_option("#precision", precision)
                info = page.inner_text("#precision-info")
                assert f"{precision}: {size} B per vector instead of 256 B (float32)" in info
                assert "change rank" in info
                ranks = page.eval_on_selector_all("#ranking li", "ls => ls.map(l => +l.dataset.precisionRank)")
                assert sorted(ranks) == [1, 2, 3, 4]
                assert ranks[0] == 1  # the query itself stays first
            page.select_option("#precision", "float")
            assert page.inner_text("#precision-info") == ""

            # the key is only stored when the box is ticked
            assert page.evaluate("localStorage.length") == 0
            page.check("#remember")
            assert page.evaluate("localStorage.getItem('embedding_api.playground.key')") == API_KEY
            page.uncheck("#remember")
            assert page.evaluate("localStorage.length") == 0

            page.check("#stretch")  # colours spread over the observed range; the printed values stay
            assert page.eval_on_selector_all("#grid .cell", "cs => cs.length") == 16
            assert page.inner_text("#grid .cell[data-row='0'][data-col='0']") == "1.00"

            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert screenshot.is_file() and screenshot.stat().st_size > 0


def test_the_rerank_panel_shows_bars_by_score(
    tiny_model_dir: Path, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import httpx

    from tests.support.live import Server

    sync_api = pytest.importorskip("playwright.sync_api")
    documents = ["a cat sleeping on a couch", "stock prices fell", "cats purr", "a red bicycle"]
    models = f"vl={tiny_model_dir},rr={family_dirs['vl_reranker']}"
    with Server(models=models) as server, sync_api.sync_playwright() as playwright:
        context = _browser(playwright, tmp_path / "profile")
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{server.url}/")
            page.fill("#api-key", API_KEY)
            page.dispatch_event("#api-key", "change")  # the rerankers are listed with the key
            page.wait_for_selector("#rerank-model option[value='rr']", state="attached")
            page.fill("#rerank-query", "a cat")
            page.fill("#rerank-documents", "\n".join(documents))
            page.click("#rerank")
            page.wait_for_selector("#rerank-results li")
            shown = [
                int(x) for x in page.eval_on_selector_all("#rerank-results li", "els => els.map(e => e.dataset.index)")
            ]
            scores = [
                float(x)
                for x in page.eval_on_selector_all("#rerank-results .score", "els => els.map(e => e.textContent)")
            ]
        finally:
            context.close()
        answer = httpx.post(
            f"{server.url}/v1/rerank",
            json={"model": "rr", "query": "a cat", "documents": documents},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        ).json()
    assert shown == [row["index"] for row in answer["results"]]
    assert scores == pytest.approx([row["relevance_score"] for row in answer["results"]], abs=5e-4)
    assert scores == sorted(scores, reverse=True)
