"""Media files built in memory for tests: images whose header lies about their size, and small videos."""

from __future__ import annotations

import io
import struct
import zlib

import av
import numpy as np
from PIL import Image

from tests.conftest import image_bytes


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size: a few bytes to send, gigabytes to decode."""
    png = bytearray(image_bytes(Image.new("RGB", (1, 1))))
    body = b"IHDR" + struct.pack(">II", width, height) + bytes(png[24:29])
    png[12:29] = body
    png[29:33] = struct.pack(">I", zlib.crc32(body))
    return bytes(png)


def gif_claiming(width: int, height: int) -> bytes:
    gif = bytearray(image_bytes(Image.new("P", (1, 1)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def make_video(frames: int = 6, rate: int = 2, size: tuple[int, int] = (64, 48), fmt: str = "mp4") -> bytes:
    """A small video with frames of distinct flat colours, encoded with mpeg4."""
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.full((height, width, 3), (index * 40) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
