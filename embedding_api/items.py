"""What the engine embeds: one item = one vector, and how urgently. No HTTP here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from PIL import Image

# How urgently a request's items are wanted: `interactive` (someone waits; the default) goes before `bulk`
# (backfills, indexing), which is never starved (engine/priority.py).
Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
DEFAULT_PRIORITY: Priority = "interactive"


class WorkAbandoned(Exception):
    """The item's request was cancelled or timed out while the item was being prepared."""


class Frames(Protocol):
    """A video's frames: a list, or a file's frames decoded one at a time as they are iterated."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Image.Image]: ...


@dataclass
class VideoClip:
    """Frames of one video, and where they sit on the source timeline."""

    frames: Frames
    fps: float | None = None  # None: a video given as a list of frames, which has no timeline of its own
    frame_indices: list[int] | None = None  # source index of each frame (video files)


def blank_is_none(instruction: str | None) -> str | None:
    """An empty or blank instruction means "none given here": the next level of precedence applies."""
    return instruction if instruction and instruction.strip() else None


def item_instruction(item_level: str | None, request_level: str | None, preset: str | None = None) -> str | None:
    """The precedence the README states: an input's own instruction, else the request's, else the preset the
    request's `input_type` selects; None means the model's default (the family fills it in: it knows the default and
    how the model's template writes it)."""
    return blank_is_none(item_level) or blank_is_none(request_level) or blank_is_none(preset)


@dataclass
class Item:
    """One input that becomes one vector: any mix of texts, images and videos, plus its instruction."""

    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)
    instruction: str | None = None
    truncate: bool = True  # shorten over-long text to fit (the recipe); False: refuse it instead
    document: Item | None = None  # for a reranker: the document scored against this item (the query)
    # Set when the request is cancelled or times out: CPU work on the item stops at its next check.
    abandoned: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def check_wanted(self) -> None:
        """Raise WorkAbandoned when nobody waits for this item any more."""
        if self.abandoned.is_set():
            raise WorkAbandoned

    @property
    def modalities(self) -> tuple[str, ...]:
        found = []
        if self.texts:
            found.append("text")
        if self.images:
            found.append("image")
        if self.videos:
            found.append("video")
        return tuple(found)
