"""Agent streams share each event's frame: made once, sent to every stream that may see it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from structlog.testing import capture_logs

import gateway.api.stream
from gateway.api.stream import Frames
from gateway.appkeys import STREAM_FRAMES
from gateway.wsframe import text_frame
from tests.api.conftest import TOKENS, Gateway
from tests.api.test_stream_presence import open_stream


async def test_every_stream_gets_the_same_frame_made_once(gw: Gateway) -> None:
    maria, jose = await open_stream(gw, "maria"), await open_stream(gw, "jose")
    visitor = await gw.visitor("Shared")
    await gw.visitor_says(visitor["token"], "Hola", "c1")
    texts = []
    for ws in (maria, jose):
        while True:
            text = (await ws.receive()).data
            if json.loads(text)["type"] == "message.received":
                texts.append(text)
                break
    assert texts[0] == texts[1]
    frames = gw.client.app[STREAM_FRAMES]
    cursor = json.loads(texts[0])["cursor"]
    # The kept frame is the very frame both streams were sent.
    (event,) = [e for e in await gw.runtime.store.read_events(None) if e.cursor == cursor]
    assert frames.frame(event) is frames.frame(event)
    assert frames.frame(event) == text_frame(texts[0].encode())
    await maria.close()
    await jose.close()


async def test_only_the_newest_frames_are_kept(gw: Gateway) -> None:
    visitor = await gw.visitor("Kept")
    for i in range(3):
        await gw.visitor_says(visitor["token"], f"m{i}", f"c{i}")
    events = [e for e in await gw.runtime.store.read_events(None) if e.cursor is not None]
    frames = Frames(gw.runtime, kept=2)
    first = [frames.frame(e) for e in events]
    # The last two are kept (the same strings come back); older ones are made again (equal).
    assert all(frames.frame(e) is made for e, made in zip(events[-2:], first[-2:], strict=True))
    again = frames.frame(events[0])
    assert again == first[0] and again is not first[0]


async def frames_until(ws: ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` logged events' frames (typing indicators have no cursor)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            frame = json.loads((await ws.receive()).data)
            if frame.get("cursor") is not None and frame["type"] != "hello":
                got.append(frame)
    return got


async def test_a_stream_that_overflows_catches_up_with_every_event_once_in_order(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One webhook's events reach the stream together; with room for one, the stream
    overflows on each, and still sends every event once, in order, from the store."""
    monkeypatch.setattr(gateway.api.stream, "QUEUED_EVENTS", 1)
    ws = await open_stream(gw, "maria")
    visitor = await gw.visitor("Overflowing")
    with capture_logs() as logs:
        for i in range(4):
            await gw.visitor_says(visitor["token"], f"m{i}", f"o{i}")
        logged = [e.cursor for e in await gw.runtime.store.read_events(None)]
        sent = await frames_until(ws, len(logged))
    assert any(line["event"] == "stream.overflow" for line in logs)
    assert [frame["cursor"] for frame in sent] == logged
    assert [f["message"]["text"] for f in sent if f["type"] == "message.received"] == [
        "m0",
        "m1",
        "m2",
        "m3",
    ]
    await ws.close()


async def test_a_stream_offered_compression_declines_it_and_its_frames_read(gw: Gateway) -> None:
    """Browsers offer permessage-deflate; the stream's frames are made once for every socket
    (`Frames`), so it accepts none, and a client that offered it reads them as they are."""
    ws = await gw.client.ws_connect(f"/api/v1/stream?access_token={TOKENS['maria']}", compress=15)
    assert ws.compress == 0
    assert json.loads((await ws.receive()).data)["type"] == "hello"
    visitor = await gw.visitor("Deflate")
    await gw.visitor_says(visitor["token"], "ñandú " * 200, "d1")
    received = [f for f in await frames_until(ws, 2) if f["type"] == "message.received"]
    assert received[0]["message"]["text"] == "ñandú " * 200
    await ws.close()


def test_a_frame_header_gives_the_length_in_the_form_its_size_needs() -> None:
    """RFC 6455 section 5.2: seven bits up to 125 bytes, then 16, then 64 bits."""
    assert text_frame(b"") == b"\x81\x00"
    assert text_frame(b"x" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert text_frame(b"hi")[2:] == b"hi"


async def test_events_replayed_are_not_sent_again_when_they_arrive_live(gw: Gateway) -> None:
    """A stream resuming `after` a cursor replays from the store, which can be ahead of what
    the node has fanned out: those events then also arrive live and must not go out twice.
    The node's fan-out is held back (its reader task stopped, its position kept) while the
    events are logged, so the replay is sure to get them first."""
    visitor = await gw.visitor("Twice")
    await gw.visitor_says(visitor["token"], "before", "t0")
    start = (await gw.runtime.store.read_events(None))[-1].cursor
    hub = gw.runtime.hub
    assert hub._task is not None
    hub._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hub._task
    for i in range(3):
        await gw.visitor_says(visitor["token"], f"held {i}", f"t{i + 1}")
    ws = await open_stream(gw, "maria", after=start)
    hub._task = asyncio.create_task(hub._run())  # fans out the held events, live
    await gw.visitor_says(visitor["token"], "after", "t9")
    logged = [e.cursor for e in await gw.runtime.store.read_events(start)]
    sent = await frames_until(ws, len(logged))
    assert [frame["cursor"] for frame in sent] == logged
    # And nothing more: what comes next is the next message's events.
    await gw.visitor_says(visitor["token"], "last", "t10")
    newer = [e.cursor for e in await gw.runtime.store.read_events(logged[-1])]
    assert [frame["cursor"] for frame in await frames_until(ws, len(newer))] == newer
    await ws.close()
