"""`GET /api/v1/stream`: an agent's live WebSocket, and the agent's presence.

While at least one of an agent's sockets is open (on any node) the agent is online. When the
last one closes, the store arms the `agent_disconnect_grace` deadline; reconnecting before it
fires cancels it, otherwise the scheduler sets the agent's active conversations pending.

The socket carries the events of conversations on the agent's queues or assigned to them.
`?after=CURSOR` first replays what the agent missed since that cursor, then goes live with no
gap and no repeat (live events at or before the last replayed cursor are dropped). The first
frame, `hello`, says with `gap: true` that the event retention deleted some of what the agent
missed: the replay starts at the oldest event kept, so reload the inbox lists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.api.events import after_cursor
from gateway.api.serialize import event_json
from gateway.api.visibility import visible_to
from gateway.appkeys import AGENT_SOCKETS, AGENT_STREAMS, RUNTIME, STREAM_FRAMES
from gateway.directory import AgentInfo
from gateway.errors import InvalidInput
from gateway.hub import Overflow, Subscription
from gateway.ids import new_id
from gateway.model import Event
from gateway.wsdrop import ClientNotReading, Sender
from gateway.wsframe import text_frame

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.stream")

routes = web.RouteTableDef()

HEARTBEAT = 10.0
"""Seconds between the server's pings; a client that has not answered within half of it is
gone (the network dropped), and its disconnect grace starts then: within 15 s, not 30."""
MAX_STREAMS_PER_AGENT = 16
"""Open streams one agent may hold on one node (tabs, devices): each costs a descriptor and a
task, so a leaked token must not be able to open them until the process runs out."""


async def _send(out: Sender, body: Any) -> None:
    await out.text(orjson.dumps(body).decode())


QUEUED_EVENTS = 10_000
"""Live events one stream may have waiting to be written; past that it overflows and catches
up from the store instead (a client slow enough to fall that far behind)."""

REPLAY_PAGE = 256
"""Events read from the store, and written to the socket together, at a time on replay."""

FRAMES_KEPT = 4096
"""Events whose frame is kept for the other streams that send it (the newest ones)."""


class Frames:
    """Each logged event's frame, made once for every stream that sends it.

    Every agent stream that may see an event sends the same text (nothing in a frame depends on
    who reads it), and making it (the event's JSON, its conversation's, its message's with the
    provider's raw payload) costs more than sending it: with 200 agents online a node spent
    most of its time making the same frame 200 times, and webhooks waited seconds. Kept by
    cursor for the newest FRAMES_KEPT events; a frame shows the conversation as of when the
    first stream sent it (`can_reply` then), as any frame shows it as of when it was made.
    Ephemeral events (typing) have no cursor, go to one conversation's viewers, and are made
    each time. What is kept is the complete WebSocket frame (`gateway.wsframe`): framing it
    for each socket, and writing each frame with its own system call, cost most of what was
    left once the JSON was shared.
    """

    def __init__(self, runtime: Runtime, kept: int = FRAMES_KEPT) -> None:
        self._runtime = runtime
        self._kept = kept
        self._frames: dict[str, bytes] = {}

    def frame(self, event: Event) -> bytes:
        cursor = event.cursor
        if cursor is not None:
            made = self._frames.get(cursor)
            if made is not None:
                return made
        runtime = self._runtime
        made = text_frame(orjson.dumps(event_json(event, runtime.clock.now(), runtime.adapters)))
        if cursor is not None:
            frames = self._frames
            frames[cursor] = made
            if len(frames) > self._kept:  # dicts keep insertion order: drop the oldest
                del frames[next(iter(frames))]
        return made


@routes.get("/api/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    agent = runtime.auth.agent(request, allow_query=True)
    after = await after_cursor(request, runtime.store)  # refused before the upgrade
    # No per-message compression: every stream is sent the same frames, made once (`Frames`);
    # compressing them per socket cost more than making them (a few KB of JSON per event).
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, compress=False)
    if not ws.can_prepare(request).ok:  # not a WebSocket handshake: no presence change at all
        raise InvalidInput("this endpoint is a WebSocket (send an Upgrade: websocket request)")
    streams = request.app[AGENT_STREAMS]
    if not streams.try_open(agent.id):
        log.warning("stream.too_many_connections", agent=agent.id)
        raise InvalidInput(
            f"agent {agent.id} already has {streams.cap} open streams on this server:"
            " close one first",
            code="too_many_connections",
        )
    try:
        return await _serve(request, runtime, agent, after, ws)
    finally:
        streams.close(agent.id)


async def _serve(
    request: web.Request,
    runtime: Runtime,
    agent: AgentInfo,
    after: str | None,
    ws: web.WebSocketResponse,
) -> web.StreamResponse:
    connection = new_id("ws")
    accept = visible_to(agent)
    # Subscribed before the agent is online, so nothing handed to them in between is missed.
    # The hub's position now is where this subscription starts: every event it gets is past
    # it (the hub moves its cursor as it hands out each event, never between the two).
    subscription = runtime.hub.subscribe(accept, maxsize=QUEUED_EVENTS)
    subscribed_at = runtime.hub.cursor
    try:
        # Before the upgrade: if the store cannot record the agent online, the client gets a
        # plain HTTP error (503 while the store is down) and retries, instead of a socket
        # that is open while the cluster believes the agent is not there (or the reverse).
        await runtime.presence.connected(agent, connection)
    except BaseException:
        subscription.close()
        raise
    sockets = request.app[AGENT_SOCKETS]
    pump: asyncio.Task[None] | None = None
    out = Sender(ws, request)
    try:
        await ws.prepare(request)
        sockets.add(ws)
        log.info("stream.connected", agent=agent.id, connection=connection)
        start = after if after is not None else subscribed_at
        frames = request.app[STREAM_FRAMES]
        pump = asyncio.create_task(
            _pump(out, runtime, frames, subscription, accept, after, start, agent)
        )
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and msg.data == "ping":
                await _send(out, {"type": "pong"})
            elif msg.type == WSMsgType.ERROR:
                break
    except ClientNotReading as exc:
        log.warning("stream.client_not_reading", agent=agent.id, error=str(exc))
    finally:
        sockets.discard(ws)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        subscription.close()
        await runtime.presence.disconnected(agent, connection)
        log.info("stream.disconnected", agent=agent.id, connection=connection)
    return ws


async def close_agent_sockets(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for open requests: close every agent stream with 1001
    (going away), so clients reconnect to another node at once instead of after the shutdown
    timeout, and their presence moves with them."""
    sockets: set[web.WebSocketResponse] = app[AGENT_SOCKETS]
    for ws in tuple(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")


async def _pump(
    out: Sender,
    runtime: Runtime,
    frames: Frames,
    subscription: Subscription,
    accept: Callable[[Event], bool],
    after: str | None,
    start: str | None,
    agent: AgentInfo,
) -> None:
    """Replay from `after`, then forward live events; on overflow re-read from the store.
    A client that stopped reading has its connection reset (`gateway.wsdrop`).

    `start`, which `hello` names, is the position the stream starts from: every event after
    it follows, replayed or live, and none at or before it. (The hub's cursor when `hello` is
    sent would be later than events already queued for this stream, such as the assignments
    its agent's coming online made: a client that records it would skip them.)"""
    # From `start` even without `after`: a stream whose queue overflows before it sent
    # anything must still know where to catch up from.
    cursor = after if after is not None else start
    try:
        gap = after is not None and await runtime.store.events_missed(after)
        await _send(out, {"type": "hello", "agent": agent.id, "cursor": start, "gap": gap})
        while True:
            if cursor is not None:
                cursor = await _replay(out, runtime, frames, accept, cursor)
            try:
                while True:
                    batch: list[bytes] = []
                    for event in await subscription.get_many():
                        if event.cursor is None:  # ephemeral (typing): not part of the log
                            batch.append(frames.frame(event))
                        elif cursor is None or event.cursor > cursor:  # not replayed already
                            batch.append(frames.frame(event))
                            cursor = event.cursor
                    if batch:
                        await out.frames(batch)
            except Overflow:
                subscription.close()
                subscription = runtime.hub.subscribe(accept, maxsize=QUEUED_EVENTS)
                log.warning("stream.overflow", agent=agent.id)
    except ClientNotReading as exc:
        log.warning("stream.client_not_reading", agent=agent.id, error=str(exc))
    finally:
        subscription.close()


async def _replay(
    out: Sender, runtime: Runtime, frames: Frames, accept: Callable[[Event], bool], cursor: str
) -> str:
    while True:
        events = await runtime.store.read_events(cursor, limit=REPLAY_PAGE)
        if not events:
            return cursor
        batch = [frames.frame(event) for event in events if accept(event)]
        if batch:
            await out.frames(batch)
        cursor = events[-1].cursor or cursor
