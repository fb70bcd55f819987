"""`parse_input`: every accepted form of `input`, and every refusal naming the exact `param`."""

from __future__ import annotations

from typing import Any

import pytest

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.media.parse import TOKEN_IDS_MESSAGE, ItemSpec, MediaRef, VideoSpec, is_url, parse_input

URL = "http://127.0.0.1:9/cat.png"
VIDEO_URL = "https://example.invalid/clip.mp4"
DATA_URI = "data:image/png;base64,iVBORw0KGgo="
RAW_B64 = "iVBORw0KGgo="


def parse(raw: Any, max_items: int = 2048) -> list[ItemSpec]:
    return parse_input(raw, max_items=max_items)


def refused(raw: Any, max_items: int = 2048) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_input(raw, max_items=max_items)
    error = caught.value
    assert error.status == 400
    assert str(error)  # never blank
    return error


# ---- accepted forms -------------------------------------------------------------------------------------------


def test_a_string_is_one_text_item() -> None:
    [spec] = parse("hello world")
    assert spec.param == "input[0]"
    assert spec.texts == ["hello world"]
    assert spec.images == [] and spec.videos == []
    assert spec.instruction is None
    assert spec.media_count == 0


def test_an_array_of_strings_is_one_item_each_in_order() -> None:
    specs = parse(["a", "b", "c"])
    assert [spec.texts for spec in specs] == [["a"], ["b"], ["c"]]
    assert [spec.param for spec in specs] == ["input[0]", "input[1]", "input[2]"]


def test_text_part_with_data() -> None:
    [spec] = parse([{"type": "text", "data": "from data"}])
    assert spec.texts == ["from data"]
    assert spec.images == [] and spec.videos == []


def test_text_part_with_text() -> None:
    [spec] = parse([{"type": "text", "text": "from text"}])
    assert spec.texts == ["from text"]


def test_a_single_object_as_the_whole_input() -> None:
    [spec] = parse({"type": "text", "text": "alone"})
    assert spec.param == "input[0]"
    assert spec.texts == ["alone"]


@pytest.mark.parametrize("source", [URL, DATA_URI, RAW_B64], ids=["url", "data-uri", "raw-base64"])
def test_image_part_keeps_the_source_unresolved(source: str) -> None:
    [spec] = parse([{"type": "image", "data": source}])
    assert spec.images == [MediaRef(source, "input[0]")]
    assert spec.texts == []
    assert spec.media_count == 1


def test_image_part_accepts_the_image_key_too() -> None:
    [spec] = parse([{"type": "image", "image": URL}])
    assert spec.images == [MediaRef(URL, "input[0]")]


def test_image_url_part_with_url_object() -> None:
    first, second = parse(["text first", {"type": "image_url", "image_url": {"url": URL}}])
    assert first.texts == ["text first"] and first.images == []
    assert second.param == "input[1]"
    assert second.texts == []
    assert second.images == [MediaRef(URL, "input[1]")]


def test_image_url_part_with_a_plain_string() -> None:
    [spec] = parse([{"type": "image_url", "image_url": DATA_URI}])
    assert spec.images == [MediaRef(DATA_URI, "input[0]")]


def test_video_part_with_a_url() -> None:
    [spec] = parse([{"type": "video", "data": VIDEO_URL}])
    assert spec.videos == [VideoSpec("input[0]", url=MediaRef(VIDEO_URL, "input[0]"))]
    assert spec.media_count == 1


def test_video_part_with_frames_names_each_frame() -> None:
    [spec] = parse([{"type": "video", "data": [URL, DATA_URI, RAW_B64]}])
    [video] = spec.videos
    assert video.url is None
    assert video.param == "input[0]"
    assert video.frames == [
        MediaRef(URL, "input[0].data[0]"),
        MediaRef(DATA_URI, "input[0].data[1]"),
        MediaRef(RAW_B64, "input[0].data[2]"),
    ]
    assert spec.media_count == 3


def test_video_part_accepts_the_video_key_too() -> None:
    [spec] = parse([{"type": "video", "video": VIDEO_URL}])
    assert spec.videos[0].url == MediaRef(VIDEO_URL, "input[0]")


@pytest.mark.parametrize("value", [{"url": VIDEO_URL}, VIDEO_URL], ids=["object", "string"])
def test_video_url_part(value: Any) -> None:
    [spec] = parse([{"type": "video_url", "video_url": value}])
    assert spec.videos == [VideoSpec("input[0]", url=MediaRef(VIDEO_URL, "input[0]"))]


def test_a_fused_array_of_parts_is_one_spec() -> None:
    fused = [
        "a caption",
        {"type": "text", "text": "more text"},
        {"type": "image", "data": URL},
        {"type": "image_url", "image_url": {"url": DATA_URI}},
        {"type": "video", "data": [URL, URL]},
    ]
    specs = parse([fused, "second"])
    assert len(specs) == 2
    first = specs[0]
    assert first.param == "input[0]"
    assert first.texts == ["a caption", "more text"]
    assert first.images == [MediaRef(URL, "input[0][2]"), MediaRef(DATA_URI, "input[0][3]")]
    assert [frame.param for frame in first.videos[0].frames] == ["input[0][4].data[0]", "input[0][4].data[1]"]
    assert first.media_count == 4
    assert specs[1].texts == ["second"]


def test_content_object_with_instruction() -> None:
    [spec] = parse([{"content": ["look", {"type": "image", "data": URL}], "instruction": "Retrieve matching photos."}])
    assert spec.texts == ["look"]
    assert spec.images == [MediaRef(URL, "input[0].content[1]")]
    assert spec.instruction == "Retrieve matching photos."


def test_content_object_without_instruction_and_with_a_single_part() -> None:
    [spec] = parse({"content": {"type": "text", "text": "only part"}})
    assert spec.texts == ["only part"]
    assert spec.instruction is None


def test_instruction_on_a_single_part_object() -> None:
    specs = parse(
        [
            {"type": "text", "text": "q", "instruction": "Find the answer."},
            {"type": "image", "data": URL, "instruction": "Describe the image."},
            {"type": "text", "text": "no instruction"},
        ]
    )
    assert [spec.instruction for spec in specs] == ["Find the answer.", "Describe the image.", None]


def test_an_empty_instruction_means_none() -> None:
    [spec] = parse([{"type": "text", "text": "q", "instruction": ""}])
    assert spec.instruction is None


def test_fused_parts_sharing_one_instruction_or_only_one_having_it() -> None:
    same = [{"type": "text", "text": "a", "instruction": "I"}, {"type": "image", "data": URL, "instruction": "I"}]
    one = [{"type": "text", "text": "a"}, {"type": "image", "data": URL, "instruction": "J"}]
    assert [spec.instruction for spec in parse([same, one])] == ["I", "J"]


def test_mixed_array_of_strings_objects_and_fused_arrays() -> None:
    specs = parse(
        [
            "plain",
            {"type": "image_url", "image_url": {"url": URL}},
            ["fused", {"type": "image", "data": RAW_B64}],
            {"content": ["content text"], "instruction": "X"},
        ]
    )
    assert [spec.param for spec in specs] == ["input[0]", "input[1]", "input[2]", "input[3]"]
    assert specs[0].texts == ["plain"] and specs[0].media_count == 0
    assert specs[1].texts == [] and specs[1].images[0].source == URL
    assert specs[2].texts == ["fused"] and specs[2].images[0].param == "input[2][1]"
    assert specs[3].texts == ["content text"] and specs[3].instruction == "X"


def test_exactly_max_items_is_accepted() -> None:
    assert len(parse(["x"] * 3, max_items=3)) == 3


# ---- refusals -------------------------------------------------------------------------------------------------


def test_empty_string_input() -> None:
    error = refused("")
    assert error.param == "input[0]"
    assert "empty" in str(error)


def test_empty_array() -> None:
    error = refused([])
    assert error.param == "input"
    assert error.kind is ErrorKind.INVALID_REQUEST
    assert "empty" in str(error)


@pytest.mark.parametrize("raw", [None, 42, 4.2, True], ids=["null", "int", "float", "bool"])
def test_input_of_the_wrong_type(raw: Any) -> None:
    assert refused(raw).param == "input"


@pytest.mark.parametrize("raw", [[1, 2, 3], [[1, 2], [3, 4, 5]]], ids=["flat", "nested"])
def test_token_id_arrays_are_refused_with_the_langchain_hint(raw: Any) -> None:
    error = refused(raw)
    assert error.param == "input"
    assert error.kind is ErrorKind.UNSUPPORTED_INPUT
    assert error.code == "token_ids_not_supported"
    assert error.message == TOKEN_IDS_MESSAGE
    assert "check_embedding_ctx_length=False" in str(error)


def test_a_token_id_array_among_strings_names_its_index() -> None:
    error = refused(["fine", [101, 102]])
    assert error.param == "input[1]"
    assert error.code == "token_ids_not_supported"
    assert "check_embedding_ctx_length=False" in str(error)


def test_token_ids_are_refused_before_the_item_count() -> None:
    assert refused([1, 2, 3, 4], max_items=2).code == "token_ids_not_supported"


def test_unknown_part_type() -> None:
    error = refused(["a", "b", "c", {"type": "audio", "data": URL}])
    assert error.param == "input[3]"
    assert "'audio'" in str(error)
    assert "image_url" in str(error)  # lists the accepted types


def test_part_without_a_type() -> None:
    assert refused([{"data": "no type"}]).param == "input[0]"


def test_unknown_part_type_inside_a_fused_array() -> None:
    error = refused(["ok", [{"type": "text", "text": "x"}, {"type": "document"}]])
    assert error.param == "input[1][1]"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (["a", None], "input[1]"),
        (["a", 3.5], "input[1]"),
        (["a", 7], "input[1]"),
        (["a", True], "input[1]"),
        ([[None]], "input[0][0]"),
        ([["ok", 5]], "input[0][1]"),
        ([{"type": "text", "text": 5}], "input[0]"),
        ([{"type": "text"}], "input[0]"),
        ([{"type": "image", "data": 123}], "input[0]"),
        ([{"type": "image"}], "input[0]"),
        (["x", {"type": "image_url", "image_url": {"url": 5}}], "input[1].image_url"),
        ([{"type": "image_url", "image_url": {"href": URL}}], "input[0].image_url"),
        ([{"type": "image_url"}], "input[0].image_url"),
        ([{"type": "video_url", "video_url": None}], "input[0].video_url"),
        ([{"type": "video", "data": 5}], "input[0]"),
        ([{"type": "video", "data": []}], "input[0]"),
        ([{"type": "video", "data": [URL, 5]}], "input[0].data[1]"),
        ([{"type": "text", "text": "a", "instruction": 5}], "input[0].instruction"),
        ([{"content": ["a"], "instruction": ["not", "a", "string"]}], "input[0].instruction"),
    ],
)
def test_wrong_types_name_the_field(raw: Any, param: str) -> None:
    assert refused(raw).param == param


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (["a", ""], "input[1]"),
        ([["a", ""]], "input[0][1]"),
        ([{"type": "text", "text": ""}], "input[0]"),
        ([{"type": "text", "data": ""}], "input[0]"),
        ([{"type": "image", "data": ""}], "input[0]"),
        ([{"type": "image_url", "image_url": {"url": ""}}], "input[0].image_url"),
        ([{"type": "image_url", "image_url": ""}], "input[0].image_url"),
        ([{"type": "video", "data": ""}], "input[0]"),
        ([{"type": "video", "data": [URL, ""]}], "input[0].data[1]"),
        ([{"content": ["a", ""]}], "input[0].content[1]"),
    ],
)
def test_empty_strings_are_refused(raw: Any, param: str) -> None:
    assert refused(raw).param == param


def test_an_empty_fused_array() -> None:
    error = refused(["a", []])
    assert error.param == "input[1]"
    assert "at least one part" in str(error)


def test_an_empty_content_list() -> None:
    assert refused([{"content": []}]).param == "input[0].content"


def test_instruction_on_a_part_inside_content_is_refused() -> None:
    error = refused([{"content": ["a", {"type": "text", "text": "b", "instruction": "I"}]}])
    assert error.param == "input[0].content[1]"


def test_too_many_items() -> None:
    error = refused(["x"] * 4, max_items=3)
    assert error.param == "input"
    assert "4" in str(error) and "3" in str(error)


def test_conflicting_instructions_in_a_fused_array() -> None:
    fused = [
        {"type": "text", "text": "a", "instruction": "First."},
        {"type": "image", "data": URL, "instruction": "Second."},
    ]
    error = refused(["ok", fused])
    assert error.param == "input[1]"
    assert "instruction" in str(error)


def test_every_message_starts_with_its_param() -> None:
    error = refused(["a", {"type": "bogus"}])
    assert str(error).startswith("input[1]: ")


# ---- media reference caps -------------------------------------------------------------------------------------


def media_refused(raw: Any, per_item: int | None = None, per_request: int | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_input(raw, max_items=2048, max_media_per_item=per_item, max_media_per_request=per_request)
    assert caught.value.status == 400
    return caught.value


def test_media_per_item_cap_counts_images_video_urls_and_every_frame() -> None:
    item = [
        {"type": "image_url", "image_url": URL},
        {"type": "video_url", "video_url": VIDEO_URL},
        {"type": "video", "data": [URL, URL, DATA_URI]},
    ]
    assert parse_input([item], max_items=10, max_media_per_item=5)[0].media_count == 5
    error = media_refused(["text", item], per_item=4)
    assert error.param == "input[1]"
    assert str(error).startswith("input[1]: has 5 media references")
    assert "MAX_MEDIA_PER_ITEM" in str(error)


def test_media_per_request_cap_names_the_item_that_passes_it() -> None:
    image = {"type": "image", "data": URL}
    assert len(parse_input([image, "text", image], max_items=10, max_media_per_request=2)) == 3
    error = media_refused([image, "text", image, [image, image]], per_request=3)
    assert error.param == "input[3]"
    assert "to 4" in str(error) and "MAX_MEDIA_PER_REQUEST" in str(error)


def test_thousands_of_references_in_one_fused_input_are_refused() -> None:
    error = media_refused([[{"type": "image_url", "image_url": f"{URL}?{n}"} for n in range(2000)]], per_item=256)
    assert error.param == "input[0]"


def test_parts_of_a_fused_input_are_capped() -> None:
    assert parse_input([["a"] * 5], max_items=8, max_parts_per_item=5)[0].part_count == 5
    with pytest.raises(ApiError) as caught:
        parse_input(["fine", ["a", "b", {"type": "image", "data": "x"}]], max_items=8, max_parts_per_item=2)
    assert caught.value.param == "input[1]" and "MAX_PARTS_PER_ITEM" in str(caught.value)


def test_instructions_are_capped_where_they_are_given() -> None:
    ok = parse_input([{"content": ["a"], "instruction": "x" * 10}], max_items=8, max_instruction_chars=10)
    assert ok[0].instruction == "x" * 10
    with pytest.raises(ApiError) as caught:
        parse_input(["a", {"content": ["b"], "instruction": "x" * 11}], max_items=8, max_instruction_chars=10)
    assert caught.value.param == "input[1].instruction" and "MAX_INSTRUCTION_CHARS" in str(caught.value)


def test_a_blank_instruction_counts_as_none() -> None:
    """So the request-level instruction (or the default) applies, as for an empty one."""
    spec = parse_input([{"content": ["a"], "instruction": " \t\n"}], max_items=8)[0]
    assert spec.instruction is None


# ---- is_url ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fetchable"),
    [
        ("http://example.com/a.png", True),
        ("HTTPS://example.com/a.png", True),
        ("file:///etc/passwd", True),
        ("gopher://127.0.0.1/", True),
        ("s3://bucket/key", True),
        ("data:image/png;base64,AAAA", False),
        ("iVBORw0KGgoAAAANSUhEUgAA", False),
        ("://nothing", False),
        (" http://example.com/", False),
    ],
)
def test_is_url(source: str, fetchable: bool) -> None:
    """Sources that name a location (fetched, or refused by the URL guard) rather than carry the bytes."""
    assert is_url(source) is fetchable
