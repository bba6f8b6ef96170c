"""The agent's live stream and presence: events arrive live, the grace period, replay by cursor."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSServerHandshakeError

from tests.api.conftest import BASE_CONFIG, TOKENS, Gateway, GatewayFactory
from tests.api.test_agent_api import one_past


async def receive(ws: ClientWebSocketResponse, *, type_: str, timeout: float = 5) -> dict[str, Any]:
    """Read frames until one of the wanted type arrives."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads((await ws.receive()).data)
            if frame["type"] == type_:
                return frame  # type: ignore[no-any-return]


async def open_stream(gw: Gateway, agent: str, after: str | None = None) -> ClientWebSocketResponse:
    query = f"?access_token={TOKENS[agent]}" + (f"&after={after}" if after else "")
    ws = await gw.client.ws_connect(f"/api/v1/stream{query}")
    hello = await receive(ws, type_="hello")
    assert hello["agent"] == agent
    return ws


async def test_stream_requires_a_token(gw: Gateway) -> None:
    resp = await gw.client.get("/api/v1/stream")
    assert resp.status == 401


async def test_new_conversation_arrives_live(gw: Gateway) -> None:
    ws = await open_stream(gw, "maria")
    visitor = await gw.visitor("Live")
    await gw.visitor_says(visitor["token"], "Hola", "c1")
    created = await receive(ws, type_="conversation.created")
    assert created["conversation"]["state"] == "waiting"
    assert created["conversation"]["contact"]["display_name"] == "Live"
    received = await receive(ws, type_="message.received")
    assert received["message"]["text"] == "Hola"
    await ws.close()


async def test_agents_only_see_their_queues(gw: Gateway) -> None:
    ws = await open_stream(gw, "ana")  # sales only
    support = await gw.visitor("S")
    await gw.visitor_says(support["token"], "help", "c1")
    sales = await gw.visitor("P")
    await gw.visitor_says(sales["token"], "price?", "c2")
    created = await receive(ws, type_="conversation.created")
    assert created["conversation"]["queue"] == "sales"
    await ws.close()


async def test_replay_after_cursor_then_live(gw: Gateway) -> None:
    ws = await open_stream(gw, "maria")
    v = await gw.visitor("R")
    await gw.visitor_says(v["token"], "one", "c1")
    first = await receive(ws, type_="message.received")
    await ws.close()
    await gw.visitor_says(v["token"], "two", "c2")
    await gw.visitor_says(v["token"], "three", "c3")
    query = f"?access_token={TOKENS['maria']}&after={first['cursor']}"
    ws = await gw.client.ws_connect(f"/api/v1/stream{query}")
    # hello names where the stream starts, so a client that records it replays nothing twice
    # and skips nothing (the newest cursor would skip "two" and "three").
    assert (await receive(ws, type_="hello"))["cursor"] == first["cursor"]
    texts = [(await receive(ws, type_="message.received"))["message"]["text"] for _ in range(2)]
    assert texts == ["two", "three"]
    await gw.visitor_says(v["token"], "four", "c4")
    assert (await receive(ws, type_="message.received"))["message"]["text"] == "four"
    await ws.close()


async def test_stream_refuses_a_cursor_never_issued_before_the_upgrade(gw: Gateway) -> None:
    v = await gw.visitor("C")
    await gw.visitor_says(v["token"], "one", "c1")
    newest = await gw.runtime.store.last_cursor()
    assert newest is not None
    nines = "".join("9" if c.isdigit() else c for c in newest)
    for after in ["zzz", "-1", nines, one_past(newest)]:
        query = f"?access_token={TOKENS['maria']}&after={after}"
        resp = await gw.client.get(f"/api/v1/stream{query}")  # a plain GET: the JSON error
        assert resp.status == 400
        assert (await resp.json())["error"] == {
            "code": "invalid_request",
            "message": "after is not a cursor this gateway issued",
        }
        with pytest.raises(WSServerHandshakeError) as refused:
            await gw.client.ws_connect(f"/api/v1/stream{query}")
        assert refused.value.status == 400
    ws = await open_stream(gw, "maria", after=newest)  # an issued cursor still resumes
    await gw.visitor_says(v["token"], "two", "c2")
    assert (await receive(ws, type_="message.received"))["message"]["text"] == "two"
    await ws.close()


async def accepted_by_maria(gw: Gateway) -> str:
    v = await gw.visitor("G")
    await gw.visitor_says(v["token"], "hi", "c1")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = str(inbox["conversations"][0]["id"])
    assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    return conv_id


async def test_disconnect_past_grace_sets_pending(gw: Gateway) -> None:
    ws = await open_stream(gw, "maria")
    conv_id = await accepted_by_maria(gw)
    await ws.close()
    await wait_offline(gw, "maria")
    gw.clock.advance(timedelta(seconds=29))
    await gw.runtime.scheduler.run_once()
    assert (await gw.get("maria", f"/api/v1/conversations/{conv_id}"))[1]["state"] == "active"
    gw.clock.advance(timedelta(seconds=2))
    await gw.runtime.scheduler.run_once()
    _, body = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert body["state"] == "pending" and body["agent"] == "maria"
    assert body["pending_reason"] == "agent_offline"  # the inbox says why: not set aside


async def test_reconnect_within_grace_changes_nothing(gw: Gateway) -> None:
    ws = await open_stream(gw, "maria")
    conv_id = await accepted_by_maria(gw)
    await ws.close()
    await wait_offline(gw, "maria")
    gw.clock.advance(timedelta(seconds=10))
    ws = await open_stream(gw, "maria")
    gw.clock.advance(timedelta(seconds=60))
    await gw.runtime.scheduler.run_once()
    _, body = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert body["state"] == "active"
    await ws.close()


async def test_two_sockets_one_presence(gw: Gateway) -> None:
    first = await open_stream(gw, "maria")
    second = await open_stream(gw, "maria")
    conv_id = await accepted_by_maria(gw)
    await first.close()
    gw.clock.advance(timedelta(minutes=5))
    await gw.runtime.scheduler.run_once()
    assert (await gw.get("maria", f"/api/v1/conversations/{conv_id}"))[1]["state"] == "active"
    await second.close()


async def wait_offline(gw: Gateway, agent: str) -> None:
    """The server handles the close asynchronously; wait for the store to record it."""
    presence = gw.runtime.presence
    async with asyncio.timeout(5):
        while True:
            async with presence.changed:
                state = (await gw.runtime.store.presence()).get(agent)
                if state is not None and not state.online:
                    return
                await presence.changed.wait()


async def test_automatic_distribution_assigns_online_agents(gw: Gateway) -> None:
    # Nobody online: the sales conversation waits.
    v = await gw.visitor("Auto")
    await gw.visitor_says(v["token"], "price please", "c1")
    _, waiting = await gw.get("ana", "/api/v1/inbox?state=waiting&queue=sales")
    assert len(waiting["conversations"]) == 1
    # Ana comes online: it is assigned to her at once, oldest first.
    ws = await open_stream(gw, "ana")
    assigned = await receive(ws, type_="conversation.updated")
    assert assigned["change"] == "assigned" and assigned["conversation"]["agent"] == "ana"
    # Ana's max_active is 1: the next one waits until she frees capacity.
    v2 = await gw.visitor("Auto2")
    await gw.visitor_says(v2["token"], "price again", "c2")
    _, waiting = await gw.get("ana", "/api/v1/inbox?state=waiting&queue=sales")
    assert len(waiting["conversations"]) == 1
    first_id = assigned["conversation"]["id"]
    assert (await gw.post("ana", f"/api/v1/conversations/{first_id}/close"))[0] == 200
    _, active = await gw.get("ana", "/api/v1/inbox?state=active&queue=sales")
    assert [c["contact"]["display_name"] for c in active["conversations"]] == ["Auto2"]
    await ws.close()


async def sales_visitor(gw: Gateway, name: str) -> None:
    v = await gw.visitor(name)
    await gw.visitor_says(v["token"], "price please", "c1")


async def inbox(gw: Gateway, agent: str, state: str) -> list[str]:
    """The display names of the agent's conversations in that state, in the inbox's order."""
    _, page = await gw.get(agent, f"/api/v1/inbox?state={state}")
    return [c["contact"]["display_name"] for c in page["conversations"]]


async def drop_off(gw: Gateway, ws: ClientWebSocketResponse, agent: str) -> None:
    """The agent's only stream closes and stays closed past the grace."""
    await ws.close()
    await wait_offline(gw, agent)
    gw.clock.advance(timedelta(seconds=31))
    await gw.runtime.scheduler.run_once()


async def test_an_agent_back_online_gets_their_own_customers_back_before_new_ones(
    gw: Gateway,
) -> None:
    """Routing audit: on an agent's return, automatic distribution filled them to
    `max_active` with new conversations, so they could resume none of the customers they had
    been answering (409 max_active_reached), who then stayed pending for good."""
    ws = await open_stream(gw, "maria")
    for name in ("First", "Second"):
        await sales_visitor(gw, name)
    assert sorted(await inbox(gw, "maria", "active")) == ["First", "Second"]  # assigned to her
    await drop_off(gw, ws, "maria")
    assert sorted(await inbox(gw, "maria", "pending")) == ["First", "Second"]
    for name in ("Third", "Fourth"):  # they wait: nobody of sales is online
        await sales_visitor(gw, name)
    ws = await open_stream(gw, "maria")
    resumed = [await receive(ws, type_="conversation.updated") for _ in range(2)]
    assert [(e["change"], e["conversation"]["contact"]["display_name"]) for e in resumed] == [
        ("resumed", "First"),
        ("resumed", "Second"),
    ]
    assert sorted(await inbox(gw, "maria", "active")) == ["First", "Second"]
    assert await inbox(gw, "maria", "waiting") == ["Third", "Fourth"]  # at max_active: they wait
    assert await inbox(gw, "maria", "pending") == []
    await ws.close()


async def test_what_an_agent_set_aside_stays_set_aside_when_they_come_back(gw: Gateway) -> None:
    ws = await open_stream(gw, "maria")
    aside = await accepted_by_maria(gw)
    assert (await gw.post("maria", f"/api/v1/conversations/{aside}/pending"))[0] == 200
    await drop_off(gw, ws, "maria")
    ws = await open_stream(gw, "maria")
    _, body = await gw.get("maria", f"/api/v1/conversations/{aside}")
    assert (body["state"], body["pending_reason"]) == ("pending", "set_aside")
    await ws.close()


async def test_hello_names_the_position_every_later_frame_follows(gw: Gateway) -> None:
    """Ana's connecting assigns her the waiting sales conversations: those events happen
    between her subscription and her hello. The hello's cursor must be before them (a client
    that records it, or skips frames at or before it, would otherwise lose the assignments)."""
    for name in ("A1", "A2"):
        v = await gw.visitor(name)
        await gw.visitor_says(v["token"], "price please", "c1")
    query = f"?access_token={TOKENS['ana']}"
    ws = await gw.client.ws_connect(f"/api/v1/stream{query}")
    hello = json.loads((await ws.receive()).data)
    assert hello["type"] == "hello"
    assigned = await receive(ws, type_="conversation.updated")
    assert assigned["change"] == "assigned"
    assert hello["cursor"] is not None and assigned["cursor"] > hello["cursor"]
    # Reading the log from hello's cursor gives exactly what the stream sends after it.
    _, page = await gw.get("ana", f"/api/v1/events?after={hello['cursor']}")
    assert assigned["cursor"] in [e["cursor"] for e in page["events"]]
    await ws.close()


ROUND_ROBIN = BASE_CONFIG.replace(
    "{name: sales, distribution: automatic, strategy: least_busy}",
    "{name: sales, distribution: automatic, strategy: round_robin}",
)


async def test_round_robin_continues_past_an_agent_who_went_offline(
    make_gateway: GatewayFactory,
) -> None:
    """maria, jose, ana in config order: after jose's turn jose leaves, and the next
    conversation is ana's, not maria's again (which would give the first listed more)."""
    gw = await make_gateway(ROUND_ROBIN)
    streams = {agent: await open_stream(gw, agent) for agent in ("maria", "jose", "ana")}
    assigned_to = []
    for n in range(2):
        visitor = await gw.visitor(f"V{n}")
        await gw.visitor_says(visitor["token"], "price?", f"c{n}")
        _, body = await gw.get("maria", "/api/v1/inbox?state=active&queue=sales")
        assigned_to = [c["agent"] for c in body["conversations"]]
    assert sorted(assigned_to) == ["jose", "maria"]
    await streams.pop("jose").close()
    await wait_offline(gw, "jose")
    visitor = await gw.visitor("V2")
    await gw.visitor_says(visitor["token"], "price?", "c2")
    _, body = await gw.get("maria", "/api/v1/inbox?state=active&queue=sales")
    latest = max(body["conversations"], key=lambda c: c["queued_at"])
    assert latest["agent"] == "ana"
    for ws in streams.values():
        await ws.close()


async def test_no_transfer_to_an_agent_whose_stream_is_gone(gw: Gateway) -> None:
    """Jose went offline: a conversation handed to him would stay active with nobody there,
    and no grace would ever start (he has no connection left to close)."""
    jose = await open_stream(gw, "jose")
    await jose.close()
    await wait_offline(gw, "jose")
    conv_id = await accepted_by_maria(gw)
    path = f"/api/v1/conversations/{conv_id}"
    status, body = await gw.post("maria", f"{path}/transfer", {"agent": "jose"})
    assert status == 409 and body["error"]["code"] == "agent_offline"
    _, conversation = await gw.get("maria", path)
    assert (conversation["state"], conversation["agent"]) == ("active", "maria")
    # Back online: the transfer goes through.
    jose = await open_stream(gw, "jose")
    status, body = await gw.post("maria", f"{path}/transfer", {"agent": "jose"})
    assert status == 200, body
    await jose.close()


async def test_an_agent_who_never_connected_may_still_be_handed_one(gw: Gateway) -> None:
    """No presence to judge by (an agent working over REST alone): as before, allowed."""
    conv_id = await accepted_by_maria(gw)
    status, body = await gw.post(
        "maria", f"/api/v1/conversations/{conv_id}/transfer", {"agent": "jose"}
    )
    assert status == 200, body


async def test_streams_past_an_agents_cap_are_refused_and_presence_is_untouched(
    gw: Gateway,
) -> None:
    """A leaked token must not open streams until the process runs out of descriptors: past
    the cap (16 per agent and node) the next is refused before the upgrade, with a 429."""
    from structlog.testing import capture_logs

    from gateway.api.stream import MAX_STREAMS_PER_AGENT
    from gateway.appkeys import AGENT_STREAMS

    streams = gw.client.app[AGENT_STREAMS]
    assert streams.cap == MAX_STREAMS_PER_AGENT == 16
    streams.cap = 2
    first, second = await open_stream(gw, "maria"), await open_stream(gw, "maria")
    with capture_logs() as logs:
        resp = await gw.upgrade(f"/api/v1/stream?access_token={TOKENS['maria']}")
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "too_many_connections"
    assert [e["agent"] for e in logs if e["event"] == "stream.too_many_connections"] == ["maria"]
    assert not [e for e in logs if e["event"].startswith("presence.")]
    jose = await open_stream(gw, "jose")  # another agent's streams count apart
    await first.close()
    await asyncio.wait_for(streams.wait_until("maria", 1), 5)  # the server is done with it
    third = await open_stream(gw, "maria")
    for ws in (second, third, jose):
        await ws.close()


TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a socket (Linux TCP_INFO: its first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def silent_websocket(gw: Gateway, path: str) -> socket.socket:
    """A WebSocket client that opens `path` and then never reads a byte (a frozen tab): a raw
    socket with a small receive window, after the handshake's answer and not a byte more."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills sooner
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gw.client.port))
    handshake = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.client.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, handshake.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def left_established(sock: socket.socket) -> None:
    """Wait up to 5 s for a socket to leave ESTABLISHED; the kernel has no event to await."""
    async with asyncio.timeout(5):
        while tcp_state(sock) == TCP_ESTABLISHED:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_client_that_stops_reading_is_cut_off(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent stream whose client stops reading while events keep coming: once every buffer
    is full, a frame that waits past the send timeout resets the connection, and the agent
    goes offline. The socket, its descriptor and its buffers (megabytes) used to stay until the
    client process went away, even after the heartbeat failed (soak audit)."""
    import gateway.wsdrop

    monkeypatch.setattr(gateway.wsdrop, "SEND_TIMEOUT", 0.5)
    # Big messages, as fast as they come: enough to fill the kernel's buffers on loopback.
    chatty = BASE_CONFIG.replace(
        "{name: site, type: webchat,",
        "{name: site, type: webchat, message_rate_limit: null, max_text: 16000,",
    )
    gw = await make_gateway(chatty)
    sock = await silent_websocket(gw, f"/api/v1/stream?access_token={TOKENS['maria']}")
    try:
        visitor = await gw.visitor("V")
        for i in range(400):  # events for maria's queue, never read by her client (13 MB)
            await gw.visitor_says(visitor["token"], "ñ" * 16000, f"slow-{i}")
            if i % 20 == 19 and not (await gw.runtime.store.presence())["maria"].online:
                break
        await wait_offline(gw, "maria")
        await left_established(sock)
    finally:
        sock.close()


async def test_distribution_asked_for_together_runs_a_few_times_and_serves_everyone(
    gw: Gateway,
) -> None:
    """A burst of new conversations asks for a run each; each run reads the queue, presence
    and every agent's load. Requests made during a run share the next one: fifty requests,
    at most two runs, and every caller returns after a run that saw its conversation."""
    ws = await open_stream(gw, "ana")  # sales only, max_active 1
    distributor = gw.runtime.distributor
    v = await gw.visitor("Burst")
    await gw.visitor_says(v["token"], "price please", "c1")
    assigned = await receive(ws, type_="conversation.updated")
    assert assigned["change"] == "assigned"
    before = distributor.runs
    await asyncio.gather(*(distributor.distribute("sales") for _ in range(50)))
    assert 1 <= distributor.runs - before <= 2
    # A caller that goes away does not take the run from the others.
    first = asyncio.ensure_future(distributor.distribute("sales"))
    second = asyncio.ensure_future(distributor.distribute("sales"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == []
    await ws.close()


TWO_AUTOMATIC = (
    BASE_CONFIG.replace(
        "  - {name: sales, distribution: automatic, strategy: least_busy}\n",
        "  - {name: sales, distribution: automatic, strategy: least_busy}\n"
        "  - {name: billing, distribution: automatic, strategy: least_busy}\n",
    )
    .replace(
        '  - {if: {text: "(?i)price|precio"}, queue: sales}\n',
        '  - {if: {text: "(?i)price|precio"}, queue: sales}\n'
        '  - {if: {text: "(?i)invoice"}, queue: billing}\n',
    )
    .replace(
        "queues: [support, sales], max_active: 2}",
        "queues: [support, sales, billing], max_active: 2}",
        1,
    )
)


async def test_an_agent_of_two_automatic_queues_gets_whoever_waited_longest(
    make_gateway: GatewayFactory,
) -> None:
    """Routing audit: an agent's automatic queues were served in name order, so every
    `billing` conversation, however recent, went before the `sales` ones waiting longer."""
    gw = await make_gateway(TWO_AUTOMATIC)
    for name in ("Sales1", "Sales2"):
        await sales_visitor(gw, name)
    gw.clock.advance(timedelta(minutes=1))
    for name in ("Billing1", "Billing2"):
        v = await gw.visitor(name)
        await gw.visitor_says(v["token"], "my invoice is wrong", "c1")
    assert await inbox(gw, "maria", "waiting") == ["Sales1", "Sales2", "Billing1", "Billing2"]
    ws = await open_stream(gw, "maria")  # max_active 2: the two who waited longest
    assert sorted(await inbox(gw, "maria", "active")) == ["Sales1", "Sales2"]
    assert await inbox(gw, "maria", "waiting") == ["Billing1", "Billing2"]
    await ws.close()


async def test_an_agent_back_while_their_grace_is_setting_conversations_pending_keeps_them(
    make_gateway: GatewayFactory,
) -> None:
    """Audit: the grace went through its list of the agent's conversations having checked
    presence once; the agent came back on another node meanwhile, took back the few already
    pending, and the rest went pending after: 286 of 300 pending with the agent online."""
    busy = BASE_CONFIG.replace(
        "queues: [support, sales], max_active: 2}", "queues: [support, sales], max_active: 40}", 1
    )
    gw = await make_gateway(busy)
    maria = await open_stream(gw, "maria")
    for n in range(30):
        v = await gw.visitor(f"G{n}")
        await gw.visitor_says(v["token"], "hola", "c1")
    _, waiting = await gw.get("maria", "/api/v1/inbox?state=waiting&limit=100")
    for conversation in waiting["conversations"]:
        assert (await gw.post("maria", f"/api/v1/conversations/{conversation['id']}/accept"))[
            0
        ] == 200
    jose = await open_stream(gw, "jose")  # watches support: sees each one go pending
    await drop_off_without_firing(gw, maria, "maria")
    grace = asyncio.create_task(gw.runtime.scheduler.run_once())
    while True:  # the grace is under way: the first conversation went pending
        event = await receive(jose, type_="conversation.updated")
        if event["conversation"]["state"] == "pending":
            break
    maria = await open_stream(gw, "maria")  # she is back, while the grace goes on
    await grace
    _, active = await gw.get("maria", "/api/v1/inbox?state=active&limit=100")
    _, pending = await gw.get("maria", "/api/v1/inbox?state=pending&limit=100")
    assert (len(active["conversations"]), len(pending["conversations"])) == (30, 0)
    await maria.close()
    await jose.close()


async def drop_off_without_firing(gw: Gateway, ws: ClientWebSocketResponse, agent: str) -> None:
    """The agent's only stream closes; the clock passes the grace, the scheduler not yet run."""
    await ws.close()
    await wait_offline(gw, agent)
    gw.clock.advance(timedelta(seconds=31))


async def test_an_agent_of_two_automatic_queues_takes_customers_oldest_first_across_them(
    make_gateway: GatewayFactory,
) -> None:
    """Audit: queues were ordered by their first customer, then each run gave out a whole
    queue: with S0, B0, S1 waiting, an agent with room for two got S0 and S1."""
    gw = await make_gateway(TWO_AUTOMATIC)
    for name, text in [("S0", "price"), ("B0", "invoice"), ("S1", "price"), ("S2", "price"),
                       ("B1", "invoice")]:  # fmt: skip
        v = await gw.visitor(name)
        await gw.visitor_says(v["token"], text, "c1")
        gw.clock.advance(timedelta(seconds=10))
    ws = await open_stream(gw, "maria")  # room for two: the two who came first
    assert sorted(await inbox(gw, "maria", "active")) == ["B0", "S0"]
    served = []
    for _ in range(3):  # each one she closes makes room for whoever came next, any queue
        _, page = await gw.get("maria", "/api/v1/inbox?state=active")
        oldest = min(page["conversations"], key=lambda c: c["queued_at"])
        assert (await gw.post("maria", f"/api/v1/conversations/{oldest['id']}/close"))[0] == 200
        now_active = set(await inbox(gw, "maria", "active"))
        served.append(sorted(now_active))
    assert served == [["B0", "S1"], ["S1", "S2"], ["B1", "S2"]]
    await ws.close()
