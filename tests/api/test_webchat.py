"""The web chat channel over real HTTP and WebSockets: the wire protocol of DESIGN section 5."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSServerHandshakeError
from structlog.testing import capture_logs

from tests.api.conftest import BASE_CONFIG, Gateway, GatewayFactory
from tests.metrics_text import sample


async def frame(ws: ClientWebSocketResponse, type_: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            data = json.loads((await ws.receive()).data)
            if data["type"] == type_:
                return data  # type: ignore[no-any-return]


async def visitor_socket(
    gw: Gateway, token: str, after: str | None = None, origin: str | None = None
) -> ClientWebSocketResponse:
    url = f"/webchat/site/ws?token={token}" + (f"&after={after}" if after else "")
    headers = {"Origin": origin} if origin else {}
    return await gw.client.ws_connect(url, headers=headers)


async def test_session_and_resume(gw: Gateway) -> None:
    first = await gw.visitor("Ana")
    assert first["visitor_id"].startswith("v_")
    resp = await gw.client.post("/webchat/site/session", json={"token": first["token"]})
    assert resp.status == 201
    assert (await resp.json())["visitor_id"] == first["visitor_id"]
    resp = await gw.client.post("/webchat/site/session", json={"token": first["token"] + "x"})
    assert resp.status == 401
    resp = await gw.client.post("/webchat/site/session", data=b"{oops")
    assert resp.status == 400


async def test_message_ack_and_resend_is_not_a_new_message(gw: Gateway) -> None:
    v = await gw.visitor()
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "Hola", "client_id": "u-1"})
    ack = await frame(ws, "ack")
    assert ack["client_id"] == "u-1" and ack["message"]["text"] == "Hola"
    # The message shape of DESIGN section 5, less what only agents see (agent, raw payload).
    assert ack["message"]["provider_message_id"] == f"{v['visitor_id']}:u-1"
    assert ack["message"]["received_at"].endswith("Z")
    await ws.send_json({"type": "message", "text": "Hola", "client_id": "u-1"})
    again = await frame(ws, "ack")
    assert again["message"]["id"] == ack["message"]["id"]
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert [m["text"] for m in conv["messages"]] == ["Hola"]
    # The same client_id with another text is not a resend: refused, not acked as stored.
    await ws.send_json({"type": "message", "text": "Adiós", "client_id": "u-1"})
    reused = await frame(ws, "error")
    assert (reused["code"], reused["client_id"]) == ("client_id_reused", "u-1")
    resp = await gw.client.post(
        "/webchat/site/messages",
        json={"text": "Adiós", "client_id": "u-1"},
        headers={"Authorization": f"Bearer {v['token']}"},
    )
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "client_id_reused"
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert [m["text"] for m in conv["messages"]] == ["Hola"]
    await ws.send_str("{broken")
    error = await frame(ws, "error")
    assert error["code"] == "invalid_request"
    await ws.send_json({"type": "message", "text": "no id"})
    assert (await frame(ws, "error"))["code"] == "invalid_request"
    await ws.send_bytes(b"\x00binary")
    binary = await frame(ws, "error")
    assert (binary["code"], binary["message"]) == (
        "invalid_request",
        "frames are JSON text, not binary",
    )
    await ws.close()


async def chat_taken_by_maria(gw: Gateway) -> tuple[dict[str, str], ClientWebSocketResponse, str]:
    """A visitor writes "Hola" over a socket and maria accepts the chat: (the visitor's
    session, their open socket, the conversation's id)."""
    v = await gw.visitor()
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "Hola", "client_id": "u-1"})
    await frame(ws, "ack")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    return v, ws, conv_id


async def test_agent_reply_is_pushed_live_and_marked_delivered(gw: Gateway) -> None:
    _, ws, conv_id = await chat_taken_by_maria(gw)
    with capture_logs() as logs:
        await gw.post(
            "maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "¿En qué te ayudo?"}
        )
        pushed = await frame(ws, "message")
        await gw.settle()
    # The push may come before the send is recorded: still no "unknown message" warning.
    assert not [e for e in logs if e["event"] == "ingest.status_unknown_message"]
    assert pushed["message"]["direction"] == "out"
    assert pushed["message"]["text"] == "¿En qué te ayudo?"
    assert "agent" not in pushed["message"] and "raw" not in pushed["message"]
    assert pushed["message"]["status"] == "delivered"  # the push is the delivery
    await gw.settle()
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert conv["messages"][-1]["status"] == "delivered"
    await ws.close()


async def test_reconnect_with_after_replays_missed_replies_in_order(gw: Gateway) -> None:
    v = await gw.visitor()
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "Hola", "client_id": "u-1"})
    ack = await frame(ws, "ack")
    await ws.close()
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    for text in ["one", "two", "three"]:
        await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": text})
    await gw.settle()
    ws = await visitor_socket(gw, v["token"], after=ack["message"]["id"])
    replayed = [(await frame(ws, "message"))["message"]["text"] for _ in range(3)]
    assert replayed == ["one", "two", "three"]
    # The same history over plain HTTP, for clients without sockets.
    resp = await gw.client.get(
        f"/webchat/site/messages?after={ack['message']['id']}",
        headers={"Authorization": f"Bearer {v['token']}"},
    )
    assert [m["text"] for m in (await resp.json())["messages"]] == ["one", "two", "three"]
    await ws.close()


async def pushed_before_ack(ws: ClientWebSocketResponse) -> list[dict[str, Any]]:
    """The `message` frames a socket got before the ack of what the visitor just sent (the
    replay, if any, comes first: it starts as the socket opens)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while not frames or frames[-1]["type"] != "ack":
            frames.append(json.loads((await ws.receive()).data))
    return [f for f in frames if f["type"] == "message"]


async def delivered(gw: Gateway, message_ids: set[str]) -> None:
    """Wait (long-polling the event log) until each of these messages is recorded delivered."""
    waiting, after = set(message_ids), ""
    async with asyncio.timeout(10):
        while waiting:
            _, page = await gw.get("crm", f"/api/v1/events?wait=5{after}")
            for event in page["events"]:
                message = event["message"]
                if event["type"] == "message.status" and message["status"] == "delivered":
                    waiting.discard(message["id"])
            after = f"&after={page['cursor']}"


async def test_reconnect_without_after_replays_the_replies_it_never_got(gw: Gateway) -> None:
    """A widget that keeps no position reconnects without `after`: it still gets what was
    missed while away (DESIGN section 2), the agent's replies no socket of the visitor got, in
    order and marked delivered, and only once: what a socket got is not replayed again."""
    v, ws, conv_id = await chat_taken_by_maria(gw)
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "seen live"})
    assert (await frame(ws, "message"))["message"]["text"] == "seen live"
    await ws.close()
    for text in ["one", "two"]:
        await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": text})
    await gw.settle()

    ws = await visitor_socket(gw, v["token"])
    replayed = [(await frame(ws, "message"))["message"] for _ in range(2)]
    assert [(m["text"], m["status"]) for m in replayed] == [
        ("one", "delivered"),
        ("two", "delivered"),
    ]
    await delivered(gw, {m["id"] for m in replayed})
    await ws.close()
    ws = await visitor_socket(gw, v["token"])  # nothing is missed any more: nothing replayed
    await ws.send_json({"type": "message", "text": "gracias", "client_id": "n-2"})
    assert await pushed_before_ack(ws) == []
    await ws.close()


async def test_a_visitor_that_stops_reading_is_cut_off(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A visitor socket whose client stops reading while the agent keeps replying: once every
    buffer is full, a frame that waits past the send timeout resets the connection, instead of
    holding it and its buffers until the client goes away (soak audit)."""
    import gateway.wsdrop
    from tests.api.test_stream_presence import (
        TCP_ESTABLISHED,
        left_established,
        silent_websocket,
        tcp_state,
    )

    monkeypatch.setattr(gateway.wsdrop, "SEND_TIMEOUT", 0.5)
    visitor = await gw.visitor()
    await gw.visitor_says(visitor["token"], "hola", "s-0")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    sock = await silent_websocket(gw, f"/webchat/site/ws?token={visitor['token']}")
    try:
        with capture_logs() as logs:
            for i in range(1500):  # 8 KB replies, never read by the visitor's client
                path = f"/api/v1/conversations/{conv_id}/messages"
                await gw.post("maria", path, {"text": "ñ" * 4096})
                if i % 25 == 24 and tcp_state(sock) != TCP_ESTABLISHED:
                    break
            await left_established(sock)
        assert "webchat.client_not_reading" in [e["event"] for e in logs]
    finally:
        sock.close()


async def test_replies_read_over_http_are_delivered_and_not_replayed(gw: Gateway) -> None:
    """A client without sockets reads the history over HTTP: the agent's replies it got are
    delivered (the agent sees so), and a socket it opens later without `after` does not
    replay them as missed."""
    v, ws, conv_id = await chat_taken_by_maria(gw)
    await ws.close()
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "por http"})
    await gw.settle()
    bearer = {"Authorization": f"Bearer {v['token']}"}
    resp = await gw.client.get("/webchat/site/messages", headers=bearer)
    replies = [m for m in (await resp.json())["messages"] if m["direction"] == "out"]
    assert [(m["text"], m["status"]) for m in replies] == [("por http", "delivered")]
    await delivered(gw, {replies[0]["id"]})
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "gracias", "client_id": "h-2"})
    assert await pushed_before_ack(ws) == []
    await ws.close()


async def test_the_visitors_read_receipt_reaches_the_agent(gw: Gateway) -> None:
    """A `read` frame (or POST /read) moves the agent's reply to `read`, live on the stream;
    only the visitor's own agent replies take one."""
    from tests.api.test_stream_presence import open_stream, receive

    v, ws, conv_id = await chat_taken_by_maria(gw)
    agent_ws = await open_stream(gw, "maria")
    path = f"/api/v1/conversations/{conv_id}/messages"
    await gw.post("maria", path, {"text": "uno"})
    first = (await frame(ws, "message"))["message"]
    await ws.send_json({"type": "read", "message_id": first["id"]})
    seen = []  # sent, delivered (the push), then read: statuses only move forward
    while not seen or seen[-1] != "read":
        report = await receive(agent_ws, type_="message.status")
        seen.append(report["message"]["status"])
    # (a receipt may overtake the write of the push's delivery, which is then stale)
    assert seen in (["sent", "delivered", "read"], ["sent", "read"], ["delivered", "read"])
    assert report["message"]["id"] == first["id"]
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert conv["messages"][-1]["status"] == "read"

    # Over HTTP; a repeat changes nothing (and is no error).
    await gw.post("maria", path, {"text": "dos"})
    second = (await frame(ws, "message"))["message"]
    bearer = {"Authorization": f"Bearer {v['token']}"}
    for _ in range(2):
        resp = await gw.client.post(
            "/webchat/site/read", json={"message_id": second["id"]}, headers=bearer
        )
        assert resp.status == 204
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert [m["status"] for m in conv["messages"] if m["direction"] == "out"] == ["read"] * 2

    # Not theirs to read: another visitor's reply, their own message, a made-up id.
    _, other_ws, other_conv = await chat_taken_by_maria(gw)
    await gw.post("maria", f"/api/v1/conversations/{other_conv}/messages", {"text": "tres"})
    theirs = (await frame(other_ws, "message"))["message"]
    own = conv["messages"][0]["id"]
    for message_id in (theirs["id"], own, "m_nope", ""):
        await ws.send_json({"type": "read", "message_id": message_id})
        error = await frame(ws, "error")
        assert error["code"] == "invalid_request", message_id
        resp = await gw.client.post(
            "/webchat/site/read", json={"message_id": message_id}, headers=bearer
        )
        assert resp.status == 400, message_id
    await delivered(gw, {theirs["id"]})
    _, other_view = await gw.get("maria", f"/api/v1/conversations/{other_conv}")
    assert other_view["messages"][-1]["status"] == "delivered"  # not read by someone else
    resp = await gw.client.post(
        "/webchat/site/read", json={"message_id": second["id"]}, headers={"Authorization": "x"}
    )
    assert resp.status == 401
    resp = await gw.client.post("/webchat/site/read", data=b"{oops", headers=bearer)
    assert resp.status == 400
    for socket in (ws, other_ws, agent_ws):
        await socket.close()


async def test_tokens_are_scoped_to_their_visitor(gw: Gateway) -> None:
    ana = await gw.visitor("Ana")
    bob = await gw.visitor("Bob")
    await gw.visitor_says(ana["token"], "secret of ana", "a1")
    resp = await gw.client.get(
        "/webchat/site/messages", headers={"Authorization": f"Bearer {bob['token']}"}
    )
    assert (await resp.json())["messages"] == []
    ws = await visitor_socket(gw, bob["token"], after="0")  # all of Bob's history: nothing
    await ws.send_json({"type": "message", "text": "bob here", "client_id": "b1"})
    ack = await frame(ws, "ack")
    assert ack["message"]["text"] == "bob here"  # and nothing of Ana's was replayed first
    await ws.close()
    try:
        await gw.client.ws_connect("/webchat/site/ws?token=forged")
        raise AssertionError("a forged token opened a socket")
    except WSServerHandshakeError as exc:
        assert exc.status == 401


async def test_after_must_be_one_of_the_visitors_own_messages(gw: Gateway) -> None:
    ana = await gw.visitor("Ana")
    bob = await gw.visitor("Bob")
    anas = (await gw.visitor_says(ana["token"], "secret of ana", "a1"))["message"]["id"]
    bobs = (await gw.visitor_says(bob["token"], "bob here", "b1"))["message"]["id"]
    bearer = {"Authorization": f"Bearer {bob['token']}"}
    for after in ["m_bogus", anas, "m_0", bobs + "x"]:
        url = f"/webchat/site/ws?token={bob['token']}&after={after}"
        resp = await gw.client.get(url)  # a plain GET shows the refusal's body
        assert resp.status == 400, after
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_request" and "after" in error["message"]
        with pytest.raises(WSServerHandshakeError) as refused:
            await gw.client.ws_connect(url)
        assert refused.value.status == 400
        resp = await gw.client.get(f"/webchat/site/messages?after={after}", headers=bearer)
        assert resp.status == 400 and "after" in (await resp.json())["error"]["message"]
    # Bob's own message, the whole history (0) and no `after` at all still open the socket.
    await gw.visitor_says(bob["token"], "again", "b2")
    ws = await visitor_socket(gw, bob["token"], after=bobs)
    assert (await frame(ws, "message"))["message"]["text"] == "again"
    await ws.close()
    ws = await visitor_socket(gw, bob["token"], after="0")
    assert [(await frame(ws, "message"))["message"]["text"] for _ in range(2)] == [
        "bob here",
        "again",
    ]
    await ws.close()
    ws = await visitor_socket(gw, bob["token"])
    await ws.close()


async def test_allowed_origins_are_enforced(gw: Gateway) -> None:
    evil = {"Origin": "https://evil.example"}
    resp = await gw.client.post("/webchat/site/session", json={}, headers=evil)
    assert resp.status == 403
    good = {"Origin": "https://shop.example.com"}
    resp = await gw.client.post("/webchat/site/session", json={}, headers=good)
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    token = (await resp.json())["token"]
    try:
        await visitor_socket(gw, token, origin="https://evil.example")
        raise AssertionError("a foreign origin opened a socket")
    except WSServerHandshakeError as exc:
        assert exc.status == 403
    ws = await visitor_socket(gw, token, origin="https://shop.example.com")
    await ws.close()


def preflight_headers(origin: str, method: str) -> dict[str, str]:
    """What a browser sends before a cross-origin call with the visitor token and a JSON body."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


async def test_cors_preflight_lets_allowed_sites_call_every_http_endpoint(gw: Gateway) -> None:
    good, evil = "https://shop.example.com", "https://evil.example"
    calls = [("session", "POST"), ("messages", "POST"), ("messages", "GET"), ("read", "POST")]
    for path, method in calls:
        resp = await gw.client.options(
            f"/webchat/site/{path}", headers=preflight_headers(good, method)
        )
        assert resp.status == 204, (path, method)
        assert resp.headers["Access-Control-Allow-Origin"] == good
        assert "Origin" in resp.headers["Vary"]
        allowed_methods = {
            m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")
        }
        assert method in allowed_methods
        allowed_headers = {
            h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type"} <= allowed_headers
        resp = await gw.client.options(
            f"/webchat/site/{path}", headers=preflight_headers(evil, method)
        )
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    resp = await gw.client.options(
        "/webchat/site/messages", headers=preflight_headers(good, "POST")
    )
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    resp = await gw.client.options("/webchat/site/session", headers=preflight_headers(good, "POST"))
    assert "GET" not in resp.headers["Access-Control-Allow-Methods"]  # session is POST only

    # The calls themselves: the page can read the answers, refusals included.
    resp = await gw.client.post("/webchat/site/session", json={}, headers={"Origin": good})
    token = (await resp.json())["token"]
    page = {"Origin": good, "Authorization": f"Bearer {token}"}
    resp = await gw.client.post(
        "/webchat/site/messages", json={"text": "from a page", "client_id": "p1"}, headers=page
    )
    assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == good
    resp = await gw.client.get("/webchat/site/messages", headers=page)
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == good
    assert [m["text"] for m in (await resp.json())["messages"]] == ["from a page"]
    expired = {"Origin": good, "Authorization": "Bearer forged"}
    resp = await gw.client.get("/webchat/site/messages", headers=expired)
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == good
    resp = await gw.client.post("/webchat/site/messages", data=b"{oops", headers=page)
    assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == good
    evil_page = {"Origin": evil, "Authorization": f"Bearer {token}"}
    resp = await gw.client.get("/webchat/site/messages", headers=evil_page)
    assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


async def test_no_agent_timeout_makes_inactive_and_next_message_opens_new(gw: Gateway) -> None:
    v = await gw.visitor()
    first = await gw.visitor_says(v["token"], "anyone?", "c1")
    gw.clock.advance(timedelta(minutes=4, seconds=59))
    await gw.runtime.scheduler.run_once()
    _, waiting = await gw.get("maria", "/api/v1/inbox?state=waiting")
    assert len(waiting["conversations"]) == 1
    gw.clock.advance(timedelta(seconds=1))
    await gw.runtime.scheduler.run_once()
    _, inactive = await gw.get("maria", "/api/v1/inbox?state=inactive")
    assert [c["inactive_reason"] for c in inactive["conversations"]] == ["no_agent_available"]
    assert inactive["conversations"][0]["contact"]["address"] == v["visitor_id"]
    assert inactive["conversations"][0]["can_reply"] is False
    second = await gw.visitor_says(v["token"], "hello again", "c2")
    _, waiting = await gw.get("maria", "/api/v1/inbox?state=waiting")
    assert len(waiting["conversations"]) == 1
    assert waiting["conversations"][0]["id"] != inactive["conversations"][0]["id"]
    assert first["message"]["id"] != second["message"]["id"]


async def test_online_agent_keeps_the_visitor_waiting(gw: Gateway) -> None:
    from tests.api.test_stream_presence import open_stream

    ws = await open_stream(gw, "maria")
    v = await gw.visitor()
    await gw.visitor_says(v["token"], "anyone?", "c1")
    gw.clock.advance(timedelta(minutes=6))
    await gw.runtime.scheduler.run_once()
    _, waiting = await gw.get("maria", "/api/v1/inbox?state=waiting")
    assert len(waiting["conversations"]) == 1
    await ws.close()


async def online_maria_takes_a_chat(
    gw: Gateway, name: str
) -> tuple[ClientWebSocketResponse, dict[str, str], str]:
    """maria opens her stream (she is online), a visitor writes, she accepts: (her stream,
    the visitor's session, the conversation's id)."""
    from tests.api.test_stream_presence import open_stream

    stream = await open_stream(gw, "maria")
    visitor = await gw.visitor(name)
    await gw.visitor_says(visitor["token"], "hola", f"{name}-1")
    _, waiting = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = waiting["conversations"][0]["id"]
    assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    return stream, visitor, conv_id


async def test_a_chat_left_by_its_agent_goes_inactive_when_no_agent_comes(gw: Gateway) -> None:
    """DESIGN section 1: a pending conversation also leaves by channel expiry, and for web
    chat that is no agent of the queue online for no_agent_timeout. A chat whose agent dropped
    off goes pending with that timer running (the visitor writing meanwhile changes nothing),
    and goes inactive when nobody came. Before, the timer ran only while waiting: such a chat
    sat pending, the visitor writing into it, until requeue_after (or for ever without one)."""
    from tests.api.test_stream_presence import wait_offline

    stream, visitor, conv_id = await online_maria_takes_a_chat(gw, "Rui")
    await stream.close()
    await wait_offline(gw, "maria")
    gw.clock.advance(timedelta(seconds=31))  # past the disconnect grace
    await gw.runtime.scheduler.run_once()
    path = f"/api/v1/conversations/{conv_id}"
    assert (await gw.get("maria", path))[1]["state"] == "pending"
    gw.clock.advance(timedelta(minutes=2))
    await gw.visitor_says(visitor["token"], "¿hay alguien?", "r2")
    gw.clock.advance(timedelta(minutes=2, seconds=59))
    await gw.runtime.scheduler.run_once()
    assert (await gw.get("maria", path))[1]["state"] == "pending"
    gw.clock.advance(timedelta(seconds=1))  # five minutes since she dropped off, nobody on
    await gw.runtime.scheduler.run_once()
    body = (await gw.get("maria", path))[1]
    assert (body["state"], body["inactive_reason"]) == ("inactive", "no_agent_available")


async def test_a_pending_chat_is_kept_while_an_agent_of_the_queue_is_online(gw: Gateway) -> None:
    stream, visitor, conv_id = await online_maria_takes_a_chat(gw, "Sol")
    assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/pending"))[0] == 200
    await gw.visitor_says(visitor["token"], "¿y bien?", "s2")
    gw.clock.advance(timedelta(minutes=6))  # maria is online: she may resume it
    await gw.runtime.scheduler.run_once()
    path = f"/api/v1/conversations/{conv_id}"
    assert (await gw.get("maria", path))[1]["state"] == "pending"
    status, resumed = await gw.post("maria", f"{path}/resume")
    assert status == 200 and resumed["conversation"]["state"] == "active"
    await stream.close()


async def test_a_waiting_chat_checked_while_agents_are_online_keeps_its_version(
    gw: Gateway,
) -> None:
    """The no-agent check finds an agent online and moves on: nothing a reader sees changed,
    so there is no event and no new version (events audit: the version rose with nothing in
    the log, and a mirror of the log lagged behind the API for ever)."""
    from tests.api.test_stream_presence import open_stream

    stream = await open_stream(gw, "maria")
    visitor = await gw.visitor("Ines")
    await gw.visitor_says(visitor["token"], "hola", "i1")
    (conv,) = (await gw.get("maria", "/api/v1/inbox?state=waiting"))[1]["conversations"]
    logged = await gw.runtime.store.read_events(None)
    for _ in range(3):  # three no-agent timeouts with maria online
        gw.clock.advance(timedelta(minutes=5, seconds=1))
        assert await gw.runtime.scheduler.run_once() >= 1
    body = (await gw.get("maria", f"/api/v1/conversations/{conv['id']}"))[1]
    assert (body["state"], body["version"]) == ("waiting", conv["version"])
    assert await gw.runtime.store.read_events(None) == logged
    assert logged[-1].conversation is not None
    assert logged[-1].conversation.version == conv["version"]
    await stream.close()


async def test_a_widget_away_when_its_chat_ended_is_told_on_coming_back(gw: Gateway) -> None:
    """Widget audit: `conversation` frames were only sent live, so a widget that was closed
    when no agent came (or the agent closed the chat) never learned it had ended. Each socket
    now says where the chat stands once it has replayed; the REST history's last page too."""
    v = await gw.visitor("Away")
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "¿hay alguien?", "client_id": "a1"})
    ack = await frame(ws, "ack")
    await ws.close()
    gw.clock.advance(timedelta(minutes=6))  # nobody of the queue online: no_agent_timeout
    await gw.runtime.scheduler.run_once()
    for after in (ack["message"]["id"], "0", None):
        ws = await visitor_socket(gw, v["token"], after=after)
        told = await frame(ws, "conversation")
        assert (told["state"], told["change"]) == ("inactive", None), after
        await ws.close()
    headers = {"Authorization": f"Bearer {v['token']}"}
    resp = await gw.client.get("/webchat/site/messages", headers=headers)
    assert (await resp.json())["conversation"] == {"state": "inactive"}
    # Before a visitor's first message there is no chat to speak of.
    fresh = await gw.visitor("Fresh")
    resp = await gw.client.get(
        "/webchat/site/messages", headers={"Authorization": f"Bearer {fresh['token']}"}
    )
    assert (await resp.json())["conversation"] is None


async def test_a_message_as_long_as_the_channel_allows_fits_in_a_socket_frame(
    make_gateway: GatewayFactory,
) -> None:
    """Widget audit: with `max_text: 65536`, a 32,000-character message (half of it emoji,
    which JSON may escape as 12 bytes each) closed the socket with 1009, no error frame,
    though the same text went through REST; a widget resending it looped."""
    site = '{name: site, type: webchat, no_agent_timeout: 5m, allowed_origins: ["https://shop.example.com"]}'
    gw = await make_gateway(BASE_CONFIG.replace(site, site[:-1] + ", max_text: 65536}"))
    v = await gw.visitor("Long")
    ws = await visitor_socket(gw, v["token"])
    text = "😀" * 16_000 + "a" * 16_000
    await ws.send_str(json.dumps({"type": "message", "text": text, "client_id": "long-1"}))
    ack = await frame(ws, "ack")
    assert ack["message"]["text"] == text
    # Past the channel's limit, a clear error frame, and the socket stays usable.
    await ws.send_str(json.dumps({"type": "message", "text": "😀" * 65_537, "client_id": "l2"}))
    refused = await frame(ws, "error")
    assert "longer than 65536 characters" in refused["message"]
    # It names the message it refuses: a widget marks that one not sent and goes on.
    assert refused["client_id"] == "l2"
    await ws.send_json({"type": "message", "text": "still here", "client_id": "l3"})
    assert (await frame(ws, "ack"))["message"]["text"] == "still here"
    await ws.close()


async def test_a_client_id_too_long_or_an_attachment_is_called_that(gw: Gateway) -> None:
    """Widget audit: a 128-character client_id was refused as "client_id is required", and a
    visitor's attachments were acked and dropped."""
    v = await gw.visitor("Ids")
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "hola", "client_id": "x" * 101})
    refused = await frame(ws, "error")
    assert refused["message"] == "client_id is longer than 100 characters"
    assert "client_id" not in refused  # not one a widget could have sent
    await ws.send_json({"type": "message", "text": "hola", "client_id": "x" * 100})
    assert (await frame(ws, "ack"))["client_id"] == "x" * 100
    # Attachments are not taken from visitors: said, not dropped as if they had gone.
    with_file = {"text": "see", "client_id": "f1", "attachments": [{"url": "https://x/y.png"}]}
    await ws.send_json({"type": "message", **with_file})
    assert "attachments are not taken" in (await frame(ws, "error"))["message"]
    headers = {"Authorization": f"Bearer {v['token']}"}
    resp = await gw.client.post("/webchat/site/messages", json=with_file, headers=headers)
    assert resp.status == 400
    await ws.close()


async def hold_fan_out(gw: Gateway) -> None:
    """Stop this node's event fan-out: what is stored meanwhile reaches sockets only once
    `resume_fan_out` is called, all at once."""
    hub = gw.runtime.hub
    assert hub._task is not None
    hub._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hub._task


def resume_fan_out(gw: Gateway) -> None:
    gw.runtime.hub._task = asyncio.create_task(gw.runtime.hub._run())


async def visitor_writes_and_it_is_stored(
    ws: ClientWebSocketResponse, text: str, client_id: str
) -> None:
    """The visitor sends `text`; returns once it is stored (its ack may still be waiting)."""
    stored = asyncio.Event()

    def notice(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if event["event"] == "ingest.stored":
            stored.set()
        return event

    with capture_logs(processors=[notice]):
        await ws.send_json({"type": "message", "text": text, "client_id": client_id})
        async with asyncio.timeout(5):
            await stored.wait()


async def messages_and_acks(ws: ClientWebSocketResponse, count: int) -> list[tuple[str, str]]:
    """The next `count` message and ack frames, as (type, text), within 3 s (less than
    ACK_WAIT: a frame held back that long is a failure)."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(3):
        while len(seen) < count:
            got = json.loads((await ws.receive()).data)
            if got["type"] in ("message", "ack"):
                seen.append((got["type"], got["message"]["text"]))
    return seen


async def test_an_ack_never_overtakes_the_push_of_a_message_stored_before_it(gw: Gateway) -> None:
    """A widget resumes after the last message it got. An agent reply stored just before the
    visitor's message (through another node, or while this node's pushes lag) used to be
    pushed after that message's ack: a reconnect in between skipped it (re-audit: 16-25 acks
    in 100 overtook such a push). Here this node's fan-out is held back while the reply is
    stored, so the ack can only come first if it does not wait for the pushes."""
    _, ws, conv_id = await chat_taken_by_maria(gw)
    await hold_fan_out(gw)
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "stored first"})
    await visitor_writes_and_it_is_stored(ws, "stored second", "u-2")  # its ack waits
    resume_fan_out(gw)
    assert await messages_and_acks(ws, 2) == [
        ("message", "stored first"),
        ("ack", "stored second"),
    ]
    await ws.close()


async def test_a_push_never_overtakes_the_ack_of_a_message_stored_before_it(
    gw: Gateway,
) -> None:
    """The other way round: an agent reply stored just after the visitor's message went out
    on the sending socket before that message's ack, so a widget resuming after the last
    frame it got lost the ack, or got the reply twice (audit: 4 resume points in 48). Here
    this node's fan-out is held back until both are stored, so both events reach the socket
    at once, and the push of the reply comes first unless it waits for the ack."""
    _, ws, conv_id = await chat_taken_by_maria(gw)
    await hold_fan_out(gw)
    await visitor_writes_and_it_is_stored(ws, "stored first", "u-2")  # its ack waits
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": "stored second"})
    resume_fan_out(gw)
    assert await messages_and_acks(ws, 2) == [
        ("ack", "stored first"),
        ("message", "stored second"),
    ]
    await ws.close()


async def test_control_characters_are_taken_out_of_a_visitors_text(gw: Gateway) -> None:
    """A NUL or a bell typed into the chat reached agents and integrators as it came (audit);
    line breaks and tabs are the visitor's own. A text of nothing but control characters is no
    text, and a resend of the same frame is the same message, not a reused client_id."""
    v = await gw.visitor()
    ws = await visitor_socket(gw, v["token"])
    sent = {
        "type": "message",
        "text": "nul\u0000 bell\u0007\tline\r\nnext\u009b",
        "client_id": "u-1",
    }
    await ws.send_json(sent)
    ack = await frame(ws, "ack")
    assert ack["message"]["text"] == "nul bell\tline\r\nnext"
    await ws.send_json(sent)
    again = await frame(ws, "ack")
    assert again["message"]["id"] == ack["message"]["id"]
    await ws.send_json({"type": "message", "text": "\u0000\u0001", "client_id": "u-2"})
    refused = await frame(ws, "error")
    assert (refused["code"], refused["client_id"]) == ("invalid_request", "u-2")
    _, events = await gw.get("maria", "/api/v1/events")
    received = [e for e in events["events"] if e["type"] == "message.received"]
    assert [e["message"]["text"] for e in received] == ["nul bell\tline\r\nnext"]
    assert received[0]["message"]["raw"]["text"] == sent["text"]  # kept as it came, for audit
    await ws.close()


async def test_a_read_receipt_reads_up_to_its_reply_and_repeats_cost_nothing(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-audit: past 120 receipts a minute they were dropped and nothing made up for them,
    so replies stayed `delivered` for good; and receipts of replies read already (two tabs)
    used the allowance up. A receipt now reads up to its reply, as WhatsApp's do, and one
    for a reply read already is not counted."""
    import plugins.webchat.adapter

    monkeypatch.setattr(plugins.webchat.adapter, "READ_RATE", "2/hour")
    gw = await make_gateway(BASE_CONFIG)
    v, ws, conv_id = await chat_taken_by_maria(gw)
    path = f"/api/v1/conversations/{conv_id}/messages"
    replies = []
    for text in ("uno", "dos", "tres", "cuatro"):
        await gw.post("maria", path, {"text": text})
        replies.append((await frame(ws, "message"))["message"]["id"])
    bearer = {"Authorization": f"Bearer {v['token']}"}

    async def read(message_id: str) -> None:
        resp = await gw.client.post(
            "/webchat/site/read", json={"message_id": message_id}, headers=bearer
        )
        assert resp.status == 204

    async def statuses() -> list[str]:
        await gw.settle()
        _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
        return [m["status"] for m in conv["messages"] if m["direction"] == "out"]

    await read(replies[0])
    for _ in range(5):  # read already: free
        await read(replies[0])
    assert await statuses() == ["read", "delivered", "delivered", "delivered"]
    await read(replies[2])  # the second receipt counted: reads up to it
    assert await statuses() == ["read", "read", "read", "delivered"]
    await read(replies[3])  # over the rate: dropped ...
    assert await statuses() == ["read", "read", "read", "delivered"]
    await ws.close()


async def test_push_deliveries_before_the_send_is_recorded_are_not_counted_stale(
    gw: Gateway,
) -> None:
    """Ops re-audit: a push reports its delivery as soon as it is written, often before the
    send is recorded; the store keeps the report and applies it with the send, but it was
    counted (and logged) as stale: 6 of 10 in a burst, and alerts on the stale rate fired.
    Such a report is `early`; nothing here is stale."""
    from tests.metrics_text import sample

    _, ws, conv_id = await chat_taken_by_maria(gw)
    path = f"/api/v1/conversations/{conv_id}/messages"
    with capture_logs() as logs:
        await asyncio.gather(*(gw.post("maria", path, {"text": f"r{i}"}) for i in range(10)))
        for _ in range(10):
            await frame(ws, "message")
        await gw.settle()
    _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
    assert [m["status"] for m in conv["messages"] if m["direction"] == "out"] == ["delivered"] * 10
    assert not [e for e in logs if e["event"] == "ingest.status_stale"]
    counted = {
        outcome: await sample(
            gw.client,
            "gateway_delivery_reports_total",
            channel="site",
            status="delivered",
            outcome=outcome,
        )
        for outcome in ("applied", "early", "stale")
    }
    assert counted["stale"] == 0 and counted["applied"] + counted["early"] == 10
    await ws.close()


async def test_widget_and_demo_are_served(gw: Gateway) -> None:
    resp = await gw.client.get("/webchat/widget.js")
    assert resp.status == 200
    assert "javascript" in resp.headers["Content-Type"]
    assert "textContent" in await resp.text()
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    resp = await gw.client.get("/webchat/site/demo")
    page = await resp.text()
    assert resp.status == 200 and 'data-channel="site"' in page
    # Hardened like the inbox page: not framed elsewhere, nothing loaded from elsewhere.
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_typing_flows_both_ways(gw: Gateway) -> None:
    from tests.api.test_stream_presence import open_stream, receive

    agent_ws = await open_stream(gw, "maria")
    v = await gw.visitor()
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "Hola", "client_id": "u-1"})
    await frame(ws, "ack")
    await ws.send_json({"type": "typing"})
    typing = await receive(agent_ws, type_="conversation.typing")
    assert typing["change"] == "visitor" and typing["cursor"] is None
    conv_id = typing["conversation"]["id"]
    status, _ = await gw.post("jose", f"/api/v1/conversations/{conv_id}/typing")
    assert status == 403  # not assigned to jose
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    resp = await gw.client.post(f"/api/v1/conversations/{conv_id}/typing", headers=gw.auth("maria"))
    assert resp.status == 204
    assert (await frame(ws, "typing"))["active"] is True
    await ws.close()
    await agent_ws.close()


async def test_a_compressed_body_is_refused_unread(gw: Gateway) -> None:
    """No browser or provider compresses what it posts; inflating a gzip bomb (1 MB that
    unpacks to 1 GB) on the event loop would hold every request for seconds. So a body with a
    Content-Encoding is refused before anything reads it, and the connection is closed."""
    bomb = gzip.compress(b" " * 50_000_000, compresslevel=9)
    for encoding, body in (("gzip", bomb), ("deflate", b"not compressed at all"), ("br", b"{}")):
        resp = await gw.client.post(
            "/webchat/site/session",
            data=body,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert resp.status == 415, await resp.text()
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        assert resp.headers.get("Connection", "").lower() == "close"
    resp = await gw.client.post(
        "/webchat/site/session",
        data=b'{"display_name": "Ana"}',
        headers={"Content-Type": "application/json", "Content-Encoding": "identity"},
    )
    assert resp.status == 201, await resp.text()


async def test_a_long_history_is_replayed_whole_and_read_in_pages(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More missed messages than one store read holds: the socket replays them all, in
    order; over HTTP they come a page at a time, `has_more` saying to ask again. (The page
    is made small here; the store reads a thousand at a time.)"""
    import plugins.webchat.adapter as webchat

    monkeypatch.setattr(webchat, "REPLAY_PAGE", 3)
    v = await gw.visitor()
    first = await gw.visitor_says(v["token"], "hola", "c-0")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    await gw.post("maria", f"/api/v1/conversations/{conv_id}/accept")
    texts = [f"answer {i}" for i in range(7)]
    for text in texts:
        await gw.post("maria", f"/api/v1/conversations/{conv_id}/messages", {"text": text})
    await gw.settle()

    ws = await visitor_socket(gw, v["token"], after=first["message"]["id"])
    assert [(await frame(ws, "message"))["message"]["text"] for _ in texts] == texts
    await ws.close()

    pages, after, more = [], first["message"]["id"], True
    while more:
        resp = await gw.client.get(
            f"/webchat/site/messages?after={after}",
            headers={"Authorization": f"Bearer {v['token']}"},
        )
        body = await resp.json()
        pages.append([m["text"] for m in body["messages"]])
        after, more = body["messages"][-1]["id"], body["has_more"]
    assert pages == [texts[0:3], texts[3:6], texts[6:7]]


async def test_the_visitor_socket_takes_permessage_deflate_when_offered(gw: Gateway) -> None:
    """README: unlike the agents' stream (whose frames are made once for every stream), a
    visitor's socket is compressed when the browser offers it."""
    v = await gw.visitor()
    ws = await gw.client.ws_connect(f"/webchat/site/ws?token={v['token']}", compress=15)
    assert ws.compress == 15
    await ws.send_json({"type": "message", "text": "Hola " * 100, "client_id": "z-1"})
    assert (await frame(ws, "ack"))["message"]["text"] == "Hola " * 100
    await ws.close()
    plain = await visitor_socket(gw, v["token"])
    assert plain.compress == 0
    await plain.close()


async def test_a_new_chat_after_one_that_ended_is_told_to_the_socket(gw: Gateway) -> None:
    """README audit: only changes of a chat were told, not its start. After the agent closed
    one, the visitor's next message opened a new chat and the socket said nothing, so a
    widget still took the chat for closed, and when the new one was closed too, it was the
    same state again: the widget did not say so."""
    v = await gw.visitor("Again")
    ws = await visitor_socket(gw, v["token"])
    await ws.send_json({"type": "message", "text": "hola", "client_id": "n1"})
    first = await frame(ws, "conversation")  # the chat starts, then the message is acked
    assert (first["state"], first["change"]) == ("waiting", "created")
    await frame(ws, "ack")
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conv_id = inbox["conversations"][0]["id"]
    for action in ("accept", "close"):
        assert (await gw.post("maria", f"/api/v1/conversations/{conv_id}/{action}"))[0] == 200
    assert (await frame(ws, "conversation"))["state"] == "active"
    assert (await frame(ws, "conversation"))["state"] == "closed"
    await ws.send_json({"type": "message", "text": "otra cosa", "client_id": "n2"})
    again = await frame(ws, "conversation")
    assert (again["state"], again["change"]) == ("waiting", "created")
    await ws.close()


async def test_a_webhook_posted_to_a_web_chat_channel_is_a_404_counted_as_one(gw: Gateway) -> None:
    """README audit: it was counted as `error` (a failure of ours), not as the 404 it got."""
    resp = await gw.client.post("/webhooks/site", json={})
    assert resp.status == 404
    metric = "gateway_webhooks_total"
    assert await sample(gw.client, metric, channel="site", outcome="http_404") == 1
    assert await sample(gw.client, metric, channel="site", outcome="error") == 0
