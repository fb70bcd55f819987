"""Which frames of a video the model sees: the official embedder's picks, with qwen-vl-utils' frame-count rule."""

from __future__ import annotations

import numpy as np
import torch
from qwen_vl_utils import vision_process

VIDEO_SAMPLE_FPS = 1.0  # the official embedder samples video files at 1 frame per second


def even_positions(count: int, limit: int) -> list[int]:
    """At most `limit` positions spread over `count` frames of a frame list, truncated to integers as the
    official embedder does (`np.linspace(..., dtype=int)`, not rounding)."""
    if count <= limit:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, limit, dtype=int)]


def video_file_indices(total: int, fps: float, max_frames: int) -> list[int]:
    """Source indices taken from a video file of `total` frames at `fps`: qwen-vl-utils' `smart_nframes` count
    (about one per second, at least 4, even, at most `max_frames`) at rounded `linspace` positions.

    A video of one frame keeps it (qwen-vl-utils refuses it; the frame is padded to a pair later)."""
    if total < 2:
        return list(range(total))
    rule = {"fps": VIDEO_SAMPLE_FPS, "max_frames": max_frames}
    count = vision_process.smart_nframes(rule, total_frames=total, video_fps=fps)
    return [int(i) for i in torch.linspace(0, total - 1, count).round().long().tolist()]


class QwenFramePicker:
    """The frames Qwen3-VL-Embedding sees, for media to fetch and decode those only (and the family to apply to
    frames given to it directly): at most `max_frames` (64 in the official code; MAX_VIDEO_FRAMES may lower it)."""

    def __init__(self, max_frames: int = 64) -> None:
        self.max_frames = max_frames

    def list_positions(self, count: int) -> list[int]:
        return even_positions(count, self.max_frames)

    def file_indices(self, total: int, fps: float) -> list[int]:
        return video_file_indices(total, fps, self.max_frames)
