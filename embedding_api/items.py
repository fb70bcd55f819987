"""What the engine embeds: one item = one vector. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class VideoClip:
    """Frames of one video, already decoded, with where they sit on the source timeline."""

    frames: list[Image.Image]
    fps: float = 1.0
    frame_indices: list[int] | None = None  # None: frames are consecutive samples at `fps`


@dataclass
class Item:
    """One input that becomes one vector: any mix of texts, images and videos, plus its instruction."""

    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)
    instruction: str | None = None
    truncate: bool = True  # shorten over-long text to fit (the recipe); False: refuse it instead

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
