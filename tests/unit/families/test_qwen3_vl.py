"""The adapter against the independent recipe oracle, on checkpoints of different shapes, vocabularies and layouts."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from devtools.tiny_checkpoint import TinySpec, build_tiny_checkpoint
from embedding_api.families.base import EmbeddingFamily
from embedding_api.families.loader import load_family
from embedding_api.http.app import create_app
from embedding_api.items import Item, VideoClip
from tests.conftest import API_KEY, MediaServer, b64, data_uri, image_bytes, make_image, make_settings, wait_ready
from tests.support.reference_recipe import RefItem, reference_embed

ATOL = 1e-5
OTHER_SPEC = TinySpec(
    hidden_size=96,
    num_layers=3,
    num_heads=6,
    num_kv_heads=3,
    head_dim=16,
    intermediate_size=160,
    vision_depth=3,
    vision_hidden_size=48,
    vision_heads=3,
    vision_intermediate_size=96,
    deepstack_indexes=(0, 1),
    extra_vocab_words=300,
    layout="released",
    seed=7,
)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint unlike the default test one: other sizes, other vocabulary, the released layout."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("other-model"), OTHER_SPEC)


@pytest.fixture(scope="module")
def other_client(other_model_dir: Path) -> Iterator[TestClient]:
    """Served through the real loader from MODEL_PATH, like a user's checkpoint."""
    with TestClient(create_app(make_settings(other_model_dir))) as client:
        wait_ready(client)
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


def vectors_of(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def test_every_input_form_equals_the_recipe(
    other_client: TestClient, other_model_dir: Path, media_server: MediaServer
) -> None:
    cat, dog, wide = make_image(64, 48, seed=1), make_image(80, 80, seed=2), make_image(300, 90, seed=3)
    frames = [make_image(56, 40, seed=10 + i) for i in range(5)]
    url = media_server.add("/cat.png", image_bytes(cat))
    jpeg = image_bytes(dog, "JPEG")
    import io

    from PIL import Image

    dog_decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    request_input: list[Any] = [
        "a plain string",
        {"type": "text", "data": "seed text form"},
        {"type": "text", "text": "chat text form", "instruction": "Retrieve images relevant to the query"},
        {"type": "image", "data": url},
        {"type": "image", "data": data_uri(jpeg, "image/jpeg")},
        {"type": "image", "data": b64(image_bytes(wide))},
        {"type": "image_url", "image_url": {"url": url}},
        ["a cat on a mat", {"type": "image", "data": url}],
        {
            "content": [{"type": "text", "text": "caption"}, {"type": "image_url", "image_url": url}],
            "instruction": "Find it!",
        },
        {"type": "video", "data": [data_uri(image_bytes(f)) for f in frames]},
        [{"type": "video", "data": [b64(image_bytes(f)) for f in frames[:3]]}, "a short clip"],
    ]
    response = other_client.post("/v1/embeddings", json={"model": "Qwen3-VL-Embedding-2B", "input": request_input})
    served = vectors_of(response)
    expected = reference_embed(
        other_model_dir,
        [
            RefItem(texts=["a plain string"]),
            RefItem(texts=["seed text form"]),
            RefItem(texts=["chat text form"], instruction="Retrieve images relevant to the query"),
            RefItem(images=[cat]),
            RefItem(images=[dog_decoded]),
            RefItem(images=[wide]),
            RefItem(images=[cat]),
            RefItem(texts=["a cat on a mat"], images=[cat]),
            RefItem(texts=["caption"], images=[cat], instruction="Find it!"),
            RefItem(videos=[frames]),
            RefItem(texts=["a short clip"], videos=[frames[:3]]),
        ],
    )
    assert served.shape == (11, OTHER_SPEC.hidden_size)
    np.testing.assert_allclose(served, expected, atol=ATOL)
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 11 * 10


def test_request_instruction_dimensions_and_base64(other_client: TestClient, other_model_dir: Path) -> None:
    texts = ["where is the station", "train timetable"]
    body = {"input": texts, "instruction": "Retrieve relevant passages", "dimensions": 32, "encoding_format": "base64"}
    response = other_client.post("/v1/embeddings", json=body)
    assert response.status_code == 200
    served = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]])
    expected = reference_embed(
        other_model_dir, [RefItem(texts=[t], instruction="Retrieve relevant passages") for t in texts], dimensions=32
    )
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_unnormalized_output_is_the_raw_pooled_state(other_client: TestClient, other_model_dir: Path) -> None:
    served = vectors_of(other_client.post("/v1/embeddings", json={"input": "raw", "normalize": False}))
    expected = reference_embed(other_model_dir, [RefItem(texts=["raw"])], normalize=False)
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert abs(float(np.linalg.norm(served[0])) - 1.0) > 1e-3


def test_dimension_is_read_from_the_checkpoint(other_client: TestClient) -> None:
    health = other_client.get("/health").json()
    assert health["embedding_dimension"] == OTHER_SPEC.hidden_size
    response = other_client.post("/v1/embeddings", json={"input": "x", "dimensions": OTHER_SPEC.hidden_size + 1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "dimensions"


def test_batched_equals_one_by_one(other_client: TestClient) -> None:
    inputs: list[Any] = [f"sentence number {i} " + "padding words " * (i % 5) for i in range(12)]
    inputs.append({"type": "image", "data": b64(image_bytes(make_image(50, 70, seed=4)))})
    together = vectors_of(other_client.post("/v1/embeddings", json={"input": inputs}))
    alone = np.concatenate([vectors_of(other_client.post("/v1/embeddings", json={"input": [x]})) for x in inputs])
    np.testing.assert_allclose(together, alone, atol=ATOL)


def test_default_checkpoint_matches_recipe_through_the_adapter(
    tiny_family: EmbeddingFamily, tiny_model_dir: Path
) -> None:
    image = make_image(33, 100, seed=5)
    frames = [make_image(40, 40, seed=20 + i) for i in range(4)]
    items = [
        Item(texts=["hello", "world"]),
        Item(images=[image, make_image(64, 64, seed=6)]),
        Item(videos=[VideoClip(frames=frames)], texts=["clip"], instruction="Describe:"),
        Item(),
    ]
    prepared = [tiny_family.prepare(item) for item in items]
    pooled = tiny_family.run(tiny_family.collate(prepared))
    served = tiny_family.finish(pooled, None, True)
    expected = reference_embed(
        tiny_model_dir,
        [
            RefItem(texts=["hello", "world"]),
            RefItem(images=[image, make_image(64, 64, seed=6)]),
            RefItem(texts=["clip"], videos=[frames], instruction="Describe:"),
            RefItem(),
        ],
    )
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_long_text_is_shortened_so_the_template_still_fits(tiny_model_dir: Path) -> None:
    family = load_family(make_settings(tiny_model_dir, max_length=64))
    prepared = family.prepare(Item(texts=["many words in a row " * 200]))
    assert prepared.payload.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    batch = family.collate([prepared])
    assert batch.token_counts[0] <= 64
    assert batch.token_counts[0] >= 56  # cut close to the limit, not far below it


def test_special_token_ids_come_from_the_checkpoint(tiny_family: EmbeddingFamily, other_model_dir: Path) -> None:
    other = load_family(make_settings(other_model_dir))
    assert other.dimension == OTHER_SPEC.hidden_size
    ids = [family.processor.image_token_id for family in (tiny_family, other)]  # type: ignore[attr-defined]
    assert ids[0] != ids[1]


# ---- every input kind the official embedder handles through qwen-vl-utils ---------------------------------------


def make_mp4(path: Path, *, seconds: float, fps: int, size: tuple[int, int], seed: int = 0) -> bytes:
    """An H.264 mp4 whose frames differ (moving gradient plus noise), written to `path`; its bytes."""
    import av

    width, height = size
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            ramp = (np.arange(width)[None, :] * 3 + index * 17 + np.arange(height)[:, None]) % 256
            pixels = np.stack([ramp, np.roll(ramp, index, axis=1), 255 - ramp], axis=-1).astype(np.int64)
            pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def png_bytes(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def grey_alpha_png() -> Any:
    from PIL import Image

    grey = np.tile(np.arange(0, 240, 4, dtype=np.uint8), (40, 1))
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[:, None], (1, 60))
    return Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])


def palette_png_with_transparency() -> Any:
    from PIL import Image

    image = make_image(50, 44, seed=9).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3  # one palette entry is transparent
    return image


@pytest.mark.slow
def test_videos_alpha_images_and_instructions_equal_the_official_path(
    other_client: TestClient, other_model_dir: Path, media_server: MediaServer, tmp_path: Path
) -> None:
    """Each row of the faithfulness table, served over HTTP and compared with qwen-vl-utils' own preprocessing."""
    from PIL import Image

    small = [make_image(48, 48, seed=30 + i) for i in range(70)]
    wide = [make_image(100, 60, seed=200 + i) for i in range(5)]
    clips = {
        "three": make_mp4(tmp_path / "three.mp4", seconds=3, fps=10, size=(96, 64), seed=1),
        "five": make_mp4(tmp_path / "five.mp4", seconds=5, fps=10, size=(80, 80), seed=2),
        "long": make_mp4(tmp_path / "long.mp4", seconds=22, fps=1, size=(864, 832), seed=3),
    }
    urls = {name: media_server.add(f"/{name}.mp4", data, "video/mp4") for name, data in clips.items()}
    la_png, p_png = png_bytes(grey_alpha_png()), png_bytes(palette_png_with_transparency())
    (tmp_path / "la.png").write_bytes(la_png)
    (tmp_path / "p.png").write_bytes(p_png)

    def frames_of(images: list[Any]) -> dict[str, Any]:
        return {"type": "video", "data": [b64(image_bytes(image)) for image in images]}

    cases: list[tuple[Any, RefItem]] = [
        (frames_of(small[:4]), RefItem(videos=[small[:4]])),
        (frames_of(small[:5]), RefItem(videos=[small[:5]])),
        (frames_of(small), RefItem(videos=[small])),
        (frames_of(wide), RefItem(videos=[wide])),
        ([frames_of(wide[:4]), "frames and a caption"], RefItem(videos=[wide[:4]], texts=["frames and a caption"])),
        ({"type": "video", "data": urls["three"]}, RefItem(videos=[str(tmp_path / "three.mp4")])),
        ({"type": "video_url", "video_url": {"url": urls["five"]}}, RefItem(videos=[str(tmp_path / "five.mp4")])),
        ({"type": "video", "data": urls["long"]}, RefItem(videos=[str(tmp_path / "long.mp4")])),
        (
            [{"type": "video", "data": urls["three"]}, "a clip with words"],
            RefItem(videos=[str(tmp_path / "three.mp4")], texts=["a clip with words"]),
        ),
        ({"type": "image", "data": b64(la_png)}, RefItem(images=[str(tmp_path / "la.png")])),
        ({"type": "image", "data": data_uri(p_png)}, RefItem(images=[str(tmp_path / "p.png")])),
        (
            {"content": ["find the docs"], "instruction": "Find docs "},
            RefItem(texts=["find the docs"], instruction="Find docs "),
        ),
        (
            {"content": ["blank instruction"], "instruction": "   "},
            RefItem(texts=["blank instruction"], instruction="   "),
        ),
    ]
    assert Image.open(tmp_path / "p.png").mode == "P"
    served = np.concatenate(
        [vectors_of(other_client.post("/v1/embeddings", json={"input": [request]})) for request, _ in cases]
    )
    expected = reference_embed(other_model_dir, [ref for _, ref in cases])
    differences = np.abs(served - expected).max(axis=1)
    assert differences.max() <= ATOL, dict(enumerate(differences.tolist()))


def test_request_level_blank_instruction_means_the_default(other_client: TestClient, other_model_dir: Path) -> None:
    served = vectors_of(other_client.post("/v1/embeddings", json={"input": ["x y"], "instruction": " \t "}))
    expected = reference_embed(other_model_dir, [RefItem(texts=["x y"])])
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_sixteen_bit_grey_keeps_its_high_byte(other_client: TestClient, other_model_dir: Path) -> None:
    """Deliberately unlike the official path, which clips 16-bit grey to near white."""
    from PIL import Image

    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    deep = Image.fromarray(values)
    assert deep.mode == "I;16"
    served = vectors_of(
        other_client.post("/v1/embeddings", json={"input": [{"type": "image", "data": b64(png_bytes(deep))}]})
    )
    eight_bit = Image.fromarray((values >> 8).astype(np.uint8))
    expected = reference_embed(other_model_dir, [RefItem(images=[eight_bit])])
    np.testing.assert_allclose(served, expected, atol=ATOL)


def test_frames_of_mixed_sizes_are_resized_to_the_first(other_client: TestClient, other_model_dir: Path) -> None:
    """The official embedder fails on mixed sizes; the server gives the vector of frames all of the first's size."""
    first, other = make_image(64, 64, seed=41), make_image(96, 40, seed=42)
    request = {"type": "video", "data": [b64(image_bytes(first)), b64(image_bytes(other))]}
    served = vectors_of(other_client.post("/v1/embeddings", json={"input": [request]}))
    assert served.shape == (1, OTHER_SPEC.hidden_size)
    assert abs(float(np.linalg.norm(served[0])) - 1.0) < 1e-5


def test_fused_text_is_shortened_in_linear_work(tiny_model_dir: Path) -> None:
    """800 text parts over MAX_LENGTH: the characters tokenised stay a small multiple of the input, not its square."""
    family: Any = load_family(make_settings(tiny_model_dir, max_length=256))
    parts = [f"part {i} says a few more words here" for i in range(800)]
    tokenised: list[int] = []
    real_tokenizer = family.tokenizer

    class CountingTokenizer:
        def __call__(self, text: str, **kwargs: Any) -> Any:
            tokenised.append(len(text))
            return real_tokenizer(text, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(real_tokenizer, name)

    family.tokenizer = CountingTokenizer()
    prepared = family.prepare(Item(texts=parts))
    assert prepared.tokens <= 256
    assert prepared.payload.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "part 0 says" in prepared.payload.text and "part 799" not in prepared.payload.text
    assert sum(tokenised) <= 4 * sum(len(part) for part in parts)


def test_counted_tokens_equal_the_processor_tokens(tiny_family: EmbeddingFamily, tmp_path: Path) -> None:
    """The budget's count (system block counted once per instruction) is what the processor really produces."""
    from embedding_api.families.frames import QwenFramePicker
    from embedding_api.media.decode import MediaLimits, decode_video

    frames = [make_image(48, 48, seed=50 + i) for i in range(3)]
    clip = decode_video(
        make_mp4(tmp_path / "c.mp4", seconds=7, fps=10, size=(64, 64)),
        "input[0]",
        MediaLimits(frames=QwenFramePicker()),
    )
    items = [
        Item(texts=["hello there"], instruction="  Find passages about trains "),
        Item(texts=["another", "text"], instruction="  Find passages about trains "),
        Item(images=[make_image(70, 40, seed=51)], texts=["caption"]),
        Item(videos=[VideoClip(frames=frames)], texts=["clip"], instruction="Describe:"),
        Item(videos=[clip], texts=["a file"]),
        Item(),
    ]
    prepared = [tiny_family.prepare(item) for item in items]
    batch = tiny_family.collate(prepared)
    assert [item.tokens for item in prepared] == batch.token_counts


def test_padding_free_batch_of_very_different_lengths_and_media_equals_one_by_one(
    tiny_family: EmbeddingFamily,
) -> None:
    """One packed row holding a 2-word text, a 600-word text, images and videos equals each item run alone, and
    the padded layout gives the same vectors."""
    family: Any = tiny_family
    assert family.packs_sequences  # the CPU runs padding-free batches
    items = [
        Item(texts=["two words"]),
        Item(texts=["a much longer text that keeps going " * 100]),
        Item(images=[make_image(90, 40, seed=60)], texts=["with an image"]),
        Item(videos=[VideoClip(frames=[make_image(48, 48, seed=61 + i) for i in range(3)])]),
        Item(texts=["mid length text " * 20], images=[make_image(40, 40, seed=64), make_image(64, 32, seed=65)]),
    ]
    prepared = [family.prepare(item) for item in items]
    together = family.run(family.collate(prepared))
    alone = np.concatenate([family.run(family.collate([item])) for item in prepared])
    np.testing.assert_allclose(together, alone, atol=ATOL)
    family.packs_sequences = False
    try:
        padded = family.run(family.collate(prepared))
    finally:
        family.packs_sequences = True
    np.testing.assert_allclose(padded, alone, atol=ATOL)


def test_counting_in_other_threads_never_breaks_a_collation(tiny_family: EmbeddingFamily) -> None:
    """Per-item preparation (worker threads) runs while batches are collated: the tokenizers must not share state."""
    import threading

    family: Any = tiny_family
    batch_items = [family.prepare(Item(texts=[f"text number {n} " * (n * 7 + 1)])) for n in range(4)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_preparing() -> None:
        n = 0
        while not stop.is_set():
            try:
                family.prepare(Item(texts=[f"other {n} " * (n % 40 + 1)], instruction=f"Find {n % 5}"))
            except BaseException as error:
                failures.append(error)
                return
            n += 1

    workers = [threading.Thread(target=keep_preparing) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(30):
            batch = family.collate(batch_items)
            assert batch.token_counts == [item.tokens for item in batch_items]
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
    assert failures == []


def test_text_only_batches_are_packed_from_the_ids_prepare_counted(tiny_family: EmbeddingFamily) -> None:
    """A batch of prompts without visual inputs skips the processor, and gets exactly the row it would build."""
    import dataclasses

    family: Any = tiny_family
    items = [
        Item(texts=["hello there"]),
        Item(texts=["  spaces\tand\nnew lines  ", "second part"], instruction="Find passages about trains"),
        Item(texts=["ünïcödé, 漢字 and emoji 🚂🚃 mixed"], instruction="Find passages about trains"),
        Item(texts=["a literal <|im_end|> and <|im_start|>user inside the text"]),
        Item(texts=["a much longer text that keeps going " * 60]),
        Item(),
    ]
    prepared = [family.prepare(item) for item in items]
    assert all(item.payload.ids is not None for item in prepared)

    class NoProcessor:
        def __call__(self, **_: Any) -> Any:
            raise AssertionError("a text-only batch must not be tokenised again")

    processor, family.processor = family.processor, NoProcessor()
    try:
        fast = family.collate(prepared)
    finally:
        family.processor = processor
    # the same prompts through the processor, as prompts with visual inputs go
    slow = family.collate(
        [dataclasses.replace(item, payload=dataclasses.replace(item.payload, ids=None)) for item in prepared]
    )
    assert fast.token_counts == slow.token_counts == [item.tokens for item in prepared]
    assert fast.spans == slow.spans
    assert fast.tensors.keys() == slow.tensors.keys()
    for key in fast.tensors:
        assert torch.equal(fast.tensors[key], slow.tensors[key]), key
    np.testing.assert_allclose(family.run(fast), family.run(slow), atol=1e-6)


def test_prompts_with_visual_inputs_carry_no_ids(tiny_family: EmbeddingFamily) -> None:
    family: Any = tiny_family
    prepared = family.prepare(Item(images=[make_image(40, 40, seed=3)], texts=["caption"]))
    assert prepared.payload.ids is None  # the processor expands its placeholders by the pixels
