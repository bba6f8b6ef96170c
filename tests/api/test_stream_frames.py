"""Agent streams share each event's frame: made once, sent to every stream that may see it."""

from __future__ import annotations

import json

from gateway.api.stream import Frames
from gateway.appkeys import STREAM_FRAMES
from tests.api.conftest import Gateway
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
    # The kept frame is the very string both streams were sent.
    (event,) = [e for e in await gw.runtime.store.read_events(None) if e.cursor == cursor]
    assert frames.frame(event) is frames.frame(event) and frames.frame(event) == texts[0]
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
