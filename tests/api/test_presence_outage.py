"""Agent presence across a Redis outage: what the store missed is settled once it is back.

A socket that closes while Redis is down must still take the agent offline (and start their
grace, from when it closed) once Redis answers again; a socket opened while Redis is down is
refused before the upgrade and leaves no agent online. Found by an outside audit: before, the
first case left the agent online for as long as the node lived, and the second made an agent
with no socket online (and gave them conversations).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import pytest
from aiohttp import WSCloseCode, WSMsgType, WSServerHandshakeError

from tests.api.conftest import TOKENS, Build, Gateway
from tests.api.test_stream_presence import accepted_by_maria, open_stream
from tests.api.test_webchat import visitor_socket
from tests.store.redis_server import RedisServer

CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


async def wait_for(gw: Gateway, done: Callable[[], bool]) -> None:
    """Wait until presence reports a change after which `done()` holds."""
    presence = gw.runtime.presence
    async with asyncio.timeout(10):
        async with presence.changed:
            await presence.changed.wait_for(done)


async def online(gw: Gateway, agent: str) -> bool:
    state = (await gw.runtime.store.presence()).get(agent)
    return state is not None and state.online


async def test_a_socket_closed_during_an_outage_goes_offline_once_redis_is_back(
    build: Build, redis_alone: RedisServer
) -> None:
    gw = await build()
    ws = await open_stream(gw, "maria")
    conversation = await accepted_by_maria(gw)
    closed_at = gw.clock.now()

    redis_alone.kill()
    await ws.close()
    await wait_for(gw, lambda: gw.runtime.presence.unrecorded == 1)
    redis_alone.start()  # the AOF still says maria's socket is open
    assert await online(gw, "maria")

    gw.clock.advance(timedelta(seconds=20))
    await gw.runtime.presence.heartbeat()  # settles what the store missed
    assert gw.runtime.presence.unrecorded == 0
    assert not await online(gw, "maria")

    # The grace (30 s) runs from when the socket closed, not from when Redis came back.
    gw.clock.advance(timedelta(seconds=9))
    await gw.runtime.scheduler.run_once()
    assert (await gw.get("maria", f"/api/v1/conversations/{conversation}"))[1]["state"] == "active"
    gw.clock.advance(timedelta(seconds=2))
    assert gw.clock.now() - closed_at > timedelta(seconds=30)
    await gw.runtime.scheduler.run_once()
    _, body = await gw.get("maria", f"/api/v1/conversations/{conversation}")
    assert (body["state"], body["agent"]) == ("pending", "maria")


async def test_a_socket_opened_during_an_outage_is_refused_and_leaves_nobody_online(
    build: Build, redis_alone: RedisServer
) -> None:
    gw = await build()
    redis_alone.kill()
    with pytest.raises(WSServerHandshakeError) as refused:
        await gw.client.ws_connect(f"/api/v1/stream?access_token={TOKENS['ana']}")
    assert refused.value.status >= 500  # a plain HTTP answer, never a half-open socket
    redis_alone.start()

    await gw.runtime.presence.heartbeat()  # takes back a connect that may have landed
    assert gw.runtime.presence.unrecorded == 0
    assert not await online(gw, "ana")
    # Ana is on the automatic sales queue: nothing may be assigned to an agent who is absent.
    visitor = await gw.visitor("Prices")
    await gw.visitor_says(visitor["token"], "price please", "c1")
    _, waiting = await gw.get("ana", "/api/v1/inbox?state=waiting&queue=sales")
    assert len(waiting["conversations"]) == 1


async def test_shutdown_closes_agent_and_visitor_sockets_with_going_away(build: Build) -> None:
    gw = await build()
    agent = await open_stream(gw, "maria")
    visitor = await visitor_socket(gw, (await gw.visitor("Bye"))["token"])
    closing = asyncio.create_task(gw.client.server.close())  # the node shuts down
    for ws in (agent, visitor):
        async with asyncio.timeout(5):  # not after aiohttp's shutdown timeout (30 s)
            while (await ws.receive()).type not in CLOSED:
                pass
        assert ws.close_code == WSCloseCode.GOING_AWAY
    await closing


async def test_a_visitor_socket_whose_replay_hits_an_outage_says_try_again_later(
    build: Build, redis_alone: RedisServer
) -> None:
    """A socket that stayed open but pushed nothing would look healthy to the widget."""
    gw = await build()
    token = (await gw.visitor("Replay"))["token"]
    await gw.visitor_says(token, "hola", "c1")
    redis_alone.kill()
    ws = await visitor_socket(gw, token, after="0")  # the whole history: read after the upgrade
    async with asyncio.timeout(10):
        while (await ws.receive()).type not in CLOSED:
            pass
    assert ws.close_code == 1013  # try again later: the widget reconnects and replays
    redis_alone.start()
    ws = await visitor_socket(gw, token, after="0")
    async with asyncio.timeout(10):
        while True:
            frame = await ws.receive_json()
            if frame["type"] == "message":
                break
    assert frame["message"]["text"] == "hola"
    await ws.close()


async def test_a_plain_get_of_the_stream_is_refused_without_touching_presence(
    build: Build,
) -> None:
    """Not a WebSocket handshake: a 400 before the agent is ever recorded online (which would
    also start their grace, and could hand them work from an automatic queue)."""
    gw = await build()
    resp = await gw.client.get(f"/api/v1/stream?access_token={TOKENS['ana']}")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert "ana" not in await gw.runtime.store.presence()
