"""The request's `input` -> item specs (texts, media references, instruction), with `input[i]` in every error.

Accepted per top-level element (one vector each): a string; a part object (`text`, `image`, `image_url`,
`video`, `video_url`); a fused array of parts; or `{"content": [parts...]}`. Media stays unresolved here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from embedding_api.errors import ApiError, ErrorKind
from embedding_api.items import blank_is_none

TOKEN_IDS_MESSAGE = (
    "token-id arrays are not accepted: ids from another tokenizer would give wrong vectors. Send the text as "
    "strings (with LangChain's OpenAIEmbeddings, set check_embedding_ctx_length=False)."
)
PART_TYPES = ("text", "image", "image_url", "video", "video_url")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(source: str) -> bool:
    """A media string that names a location (`scheme://...`: fetched, or refused by the URL guard) rather than
    carrying the bytes (a data URI or base64). The one place this is decided."""
    return _URL.match(source) is not None


@dataclass
class MediaRef:
    """A URL, data URI or raw base64 string, and the request path that names it in errors."""

    source: str
    param: str


@dataclass
class VideoSpec:
    """A video given as one URL or as a list of frames."""

    param: str
    url: MediaRef | None = None
    frames: list[MediaRef] = field(default_factory=list)


@dataclass
class ItemSpec:
    """One top-level element of `input`, parsed but not yet fetched."""

    param: str
    texts: list[str] = field(default_factory=list)
    images: list[MediaRef] = field(default_factory=list)
    videos: list[VideoSpec] = field(default_factory=list)
    instruction: str | None = None

    @property
    def part_count(self) -> int:
        return len(self.texts) + len(self.images) + len(self.videos)

    @property
    def media_count(self) -> int:
        return len(self.images) + sum(1 if video.url else len(video.frames) for video in self.videos)


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.INVALID_REQUEST, message, param=param)


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    )


def parse_input(
    raw: Any,
    *,
    max_items: int,
    max_text_chars: int | None = None,
    max_media_per_item: int | None = None,
    max_media_per_request: int | None = None,
    max_parts_per_item: int | None = None,
    max_instruction_chars: int | None = None,
) -> list[ItemSpec]:
    """Parse the whole `input` field into one spec per output vector."""
    specs = _parse_input(raw, max_items=max_items)
    check_media_counts(specs, max_media_per_item, max_media_per_request)
    for spec in specs:
        if max_parts_per_item is not None and spec.part_count > max_parts_per_item:
            raise _invalid(
                f"has {spec.part_count} parts; at most {max_parts_per_item} are allowed per input (MAX_PARTS_PER_ITEM)",
                spec.param,
            )
        if max_instruction_chars is not None and spec.instruction is not None:
            check_instruction(spec.instruction, max_instruction_chars, f"{spec.param}.instruction")
    if max_text_chars is not None:
        for spec in specs:
            longest = max((len(text) for text in spec.texts), default=0)
            if longest > max_text_chars:
                raise _invalid(
                    f"a text of {longest} characters is above the {max_text_chars} character limit", spec.param
                )
    return specs


def check_instruction(instruction: str, max_chars: int, param: str) -> None:
    if len(instruction) > max_chars:
        raise _invalid(
            f"an instruction of {len(instruction)} characters is above the {max_chars} character limit "
            "(MAX_INSTRUCTION_CHARS)",
            param,
        )


def check_media_counts(specs: list[ItemSpec], per_item: int | None, per_request: int | None) -> None:
    """Refuse too many media references (every frame of a frame list counts) before any is fetched."""
    total = 0
    for spec in specs:
        count = spec.media_count
        if per_item is not None and count > per_item:
            raise _invalid(
                f"has {count} media references (images, video URLs and frames); at most {per_item} are allowed "
                "per input (MAX_MEDIA_PER_ITEM)",
                spec.param,
            )
        total += count
        if per_request is not None and total > per_request:
            raise _invalid(
                f"brings the request's media references (images, video URLs and frames) to {total}; at most "
                f"{per_request} are allowed per request (MAX_MEDIA_PER_REQUEST): split it into several requests",
                spec.param,
            )


def _parse_input(raw: Any, *, max_items: int) -> list[ItemSpec]:
    if isinstance(raw, str):
        return [_parse_element(raw, "input[0]")]
    if isinstance(raw, dict):
        return [_parse_element(raw, "input[0]")]
    if not isinstance(raw, list):
        raise _invalid("must be a string, an array, or an input object", "input")
    if not raw:
        raise _invalid("must not be empty", "input")
    if _is_token_ids(raw) or all(_is_token_ids(element) for element in raw):
        raise ApiError(ErrorKind.UNSUPPORTED_INPUT, TOKEN_IDS_MESSAGE, param="input", code="token_ids_not_supported")
    if len(raw) > max_items:
        raise _invalid(f"has {len(raw)} items; at most {max_items} are allowed per request", "input")
    return [_parse_element(element, f"input[{index}]") for index, element in enumerate(raw)]


def _parse_element(element: Any, param: str) -> ItemSpec:
    spec = ItemSpec(param=param)
    if isinstance(element, str):
        _add_text(spec, element, param)
    elif isinstance(element, list):
        if not element:
            raise _invalid("a fused input must have at least one part", param)
        if _is_token_ids(element):
            raise ApiError(ErrorKind.UNSUPPORTED_INPUT, TOKEN_IDS_MESSAGE, param=param, code="token_ids_not_supported")
        instructions = {_parse_part(spec, part, f"{param}[{j}]") for j, part in enumerate(element)}
        instructions.discard(None)
        if len(instructions) > 1:
            raise _invalid("parts of one fused input carry different instructions", param)
        spec.instruction = instructions.pop() if instructions else None
    elif isinstance(element, dict):
        if "content" in element:
            _parse_content(spec, element, param)
        else:
            spec.instruction = _parse_part(spec, element, param)
    else:
        raise _invalid("must be a string, an array of parts, or an input object", param)
    return spec


def _parse_content(spec: ItemSpec, element: dict[str, Any], param: str) -> None:
    content = element["content"]
    spec.instruction = _instruction(element, param)
    parts = content if isinstance(content, list) else [content]
    if not parts:
        raise _invalid("content must have at least one part", f"{param}.content")
    for j, part in enumerate(parts):
        nested = _parse_part(spec, part, f"{param}.content[{j}]")
        if nested is not None:
            raise _invalid("put the instruction on the object that holds `content`", f"{param}.content[{j}]")


def _instruction(obj: dict[str, Any], param: str) -> str | None:
    value = obj.get("instruction")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("instruction must be a string", f"{param}.instruction")
    return blank_is_none(value)


def _add_text(spec: ItemSpec, text: Any, param: str) -> None:
    if not isinstance(text, str):
        raise _invalid("text must be a string", param)
    if not text:
        raise _invalid("text must not be empty", param)
    spec.texts.append(text)


def _url_field(value: Any, param: str) -> str:
    """`image_url` / `video_url` may be a string or {"url": ...}."""
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise _invalid('must be a URL string or {"url": "..."}', param)
    return value


def _media_string(value: Any, param: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(f"{what} must be a URL, a data URI or base64 string", param)
    return value


def _parse_part(spec: ItemSpec, part: Any, param: str) -> str | None:
    """Add one part to the spec; return the instruction it carries, if any."""
    if isinstance(part, str):
        _add_text(spec, part, param)
        return None
    if not isinstance(part, dict):
        raise _invalid("each part must be a string or an object with a `type`", param)
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise _invalid(f"unknown part type {kind!r}; use one of {', '.join(PART_TYPES)}", param)
    if kind == "text":
        _add_text(spec, part.get("text", part.get("data")), param)
    elif kind == "image":
        source = _media_string(part.get("data", part.get("image")), param, "image data")
        spec.images.append(MediaRef(source, param))
    elif kind == "image_url":
        spec.images.append(MediaRef(_url_field(part.get("image_url"), f"{param}.image_url"), param))
    elif kind == "video":
        spec.videos.append(_parse_video(part.get("data", part.get("video")), param))
    else:  # video_url
        spec.videos.append(
            VideoSpec(param, url=MediaRef(_url_field(part.get("video_url"), f"{param}.video_url"), param))
        )
    return _instruction(part, param)


def _parse_video(data: Any, param: str) -> VideoSpec:
    if isinstance(data, str) and data:
        return VideoSpec(param, url=MediaRef(data, param))
    if isinstance(data, list) and data:
        frames = [
            MediaRef(_media_string(frame, f"{param}.data[{k}]", "a frame"), f"{param}.data[{k}]")
            for k, frame in enumerate(data)
        ]
        return VideoSpec(param, frames=frames)
    raise _invalid("video data must be a URL or a non-empty array of frames", param)
