"""Hostile inputs that cost CPU or memory, against a real server process, loopback only (issue 9, findings 2-4).

Bounds stated and checked here (the server runs with its default limits):
- a fused input of 800 text parts is refused (400) within REFUSAL_BOUND_S; two requests at MAX_PARTS_PER_ITEM
  with every part long (shortened to MAX_LENGTH in one pass) are answered within CAPPED_BOUND_S;
- two 64-frame 3000x3000 videos in one request are refused (4xx) from their probed size within REFUSAL_BOUND_S,
  before any frame is decoded; two 8-frame 3000x3000 videos are decoded and resized one frame at a time and
  answered within VIDEO_BOUND_S, the server's RSS never above its baseline + PEAK_MARGIN_MB;
- 16 items with a 0.5 MB instruction each are refused within REFUSAL_BOUND_S (MAX_INSTRUCTION_CHARS);
- meanwhile `/health` p99 stays under HEALTH_P99_S and normal requests are served within NORMAL_BOUND_S;
- afterwards RSS is within RSS_MARGIN_MB of its baseline.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.support.hostile_support import (
    HealthProbe,
    RssSampler,
    ServerProcess,
    new_client,
    timed_post,
    wait_for_rss,
)

pytestmark = [pytest.mark.hostile, pytest.mark.slow]

REFUSAL_BOUND_S = 3.0
CAPPED_BOUND_S = 30.0
VIDEO_BOUND_S = 30.0
NORMAL_BOUND_S = 5.0
HEALTH_P99_S = 1.0
RSS_MARGIN_MB = 300
PEAK_MARGIN_MB = 1500


def mp4(frames: int, side: int) -> bytes:
    """A 1 fps H.264 video of `frames` flat frames of side x side (small file, huge frames)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        pixels = np.zeros((side, side, 3), np.uint8)
        for index in range(frames):
            pixels[:] = index * 3
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video_part(data: bytes) -> dict[str, Any]:
    return {"type": "video", "data": "data:video/mp4;base64," + base64.b64encode(data).decode()}


async def with_normal_traffic(attacks: list[dict[str, Any]], url: str, timeout: float) -> tuple[list[Any], list[Any]]:
    """Send the attack bodies at once while a client sends normal texts; (attack results, normal results)."""
    stop = asyncio.Event()
    normal: list[tuple[int, float, str]] = []

    async def normal_client(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            normal.append(await timed_post(client, {"input": "a normal text"}, NORMAL_BOUND_S * 4))
            await asyncio.sleep(0.1)

    async with new_client(url) as client:
        background = asyncio.ensure_future(normal_client(client))
        await asyncio.sleep(0.2)
        results = await asyncio.gather(*(timed_post(client, body, timeout) for body in attacks))
        await asyncio.sleep(0.3)
        stop.set()
        await background
    return list(results), normal


class Served:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.baseline_mb = 0.0


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("hostile-media"), request_timeout=60)
    try:
        state = Served(server)
        state.baseline_mb = server.warm_up()
        yield state
    finally:
        server.close()


def check_normal(normal: list[tuple[int, float, str]], bound: float = NORMAL_BOUND_S) -> None:
    summary = [(status, round(seconds, 2)) for status, seconds, _ in normal]
    assert len(normal) >= 2, summary
    assert all(status == 200 for status, _, _ in normal), summary
    assert max(seconds for _, seconds, _ in normal) < bound, summary


def test_fused_inputs_of_many_long_parts(served: Served) -> None:
    """Finding 2: 800 parts are refused at once; 256 long parts (the cap) are shortened in one linear pass."""
    words = "a long sentence of several words repeated " * 14  # about 600 characters, 100+ tokens a part
    too_many = {"input": [[f"{i} {words}" for i in range(800)]]}
    at_cap = {"input": [[f"{i} {words}" for i in range(256)]]}
    with HealthProbe(served.server.url) as probe:
        refused, normal_a = asyncio.run(with_normal_traffic([too_many] * 4, served.server.url, 30))
        answered, normal_b = asyncio.run(with_normal_traffic([at_cap] * 2, served.server.url, 60))
    print(
        f"800 parts: {[(s, round(t, 2)) for s, t, _ in refused]}; 256 long parts: "
        f"{[(s, round(t, 2)) for s, t, _ in answered]}; {probe.summary()}"
    )
    assert all(status == 400 and "MAX_PARTS_PER_ITEM" in text for status, _, text in refused), refused
    assert max(seconds for _, seconds, _ in refused) < REFUSAL_BOUND_S
    assert all(status == 200 for status, _, _ in answered), answered
    assert max(seconds for _, seconds, _ in answered) < CAPPED_BOUND_S
    check_normal(normal_a + normal_b)
    assert probe.p99 < HEALTH_P99_S, probe.summary()


def test_huge_video_frames_are_decoded_one_at_a_time(served: Served) -> None:
    """Finding 3: small files with 3000x3000 frames."""
    too_long = {"input": [[video_part(mp4(64, 3000)), video_part(mp4(64, 3000))]]}
    fits = {"input": [video_part(mp4(8, 3000)), video_part(mp4(8, 3000))]}
    with HealthProbe(served.server.url) as probe, RssSampler(served.server) as rss:
        refused, normal_a = asyncio.run(with_normal_traffic([too_long], served.server.url, 30))
        answered, normal_b = asyncio.run(with_normal_traffic([fits], served.server.url, 60))
    print(
        f"2 x 64 frames of 3000x3000: {[(s, round(t, 2), x[:120]) for s, t, x in refused]}; 2 x 8 frames: "
        f"{[(s, round(t, 2)) for s, t, _ in answered]}; RSS baseline {served.baseline_mb:.0f} MB, peak "
        f"{rss.peak:.0f} MB; {probe.summary()}"
    )
    ((status, seconds, text),) = refused
    assert status == 422 and "MAX_LENGTH" in text and seconds < REFUSAL_BOUND_S
    ((status, seconds, text),) = answered
    assert status == 200, text
    assert seconds < VIDEO_BOUND_S
    assert rss.peak < served.baseline_mb + PEAK_MARGIN_MB
    # a normal request may wait for the one forward pass of the two videos (the device runs one batch at a time)
    check_normal(normal_a + normal_b, bound=VIDEO_BOUND_S)
    assert probe.p99 < HEALTH_P99_S, probe.summary()


def test_huge_instructions_are_refused_at_once(served: Served) -> None:
    """Finding 4: 16 items with a 0.5 MB instruction each, and a 0.5 MB request-level instruction."""
    big = "Find the passages that answer the question. " * 11_000  # about 0.5 MB
    per_item = {"input": [{"content": [f"item {i}"], "instruction": big} for i in range(16)]}
    per_request = {"input": [f"item {i}" for i in range(16)], "instruction": big}
    with HealthProbe(served.server.url) as probe:
        refused, normal = asyncio.run(with_normal_traffic([per_item, per_request] * 2, served.server.url, 30))
    print(f"0.5 MB instructions: {[(s, round(t, 2)) for s, t, _ in refused]}; {probe.summary()}")
    assert [status for status, _, _ in refused] == [400] * 4, refused
    assert all("MAX_INSTRUCTION_CHARS" in text for _, _, text in refused)
    assert '"param":"input[0].instruction"' in refused[0][2].replace(" ", "")
    assert '"param":"instruction"' in refused[1][2].replace(" ", "")
    assert max(seconds for _, seconds, _ in refused) < REFUSAL_BOUND_S
    check_normal(normal)
    assert probe.p99 < HEALTH_P99_S, probe.summary()


def test_rss_returns_near_its_baseline(served: Served) -> None:
    rss = wait_for_rss(served.server, served.baseline_mb + RSS_MARGIN_MB)
    print(f"RSS: baseline {served.baseline_mb:.0f} MB, after the attacks {rss:.0f} MB")
    assert rss <= served.baseline_mb + RSS_MARGIN_MB
