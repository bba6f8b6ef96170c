"""Rate limits of the public web chat, over real HTTP and WebSockets, on both stores.

Sessions are counted per client address (through trusted load balancers only), messages per
visitor; over the rate a request gets 429 with `Retry-After` (a socket frame: an error naming
the client_id, the socket stays open) and nothing is stored. On Redis the counters are shared:
two gateways on one Redis enforce one limit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from structlog.testing import capture_logs

from gateway.appkeys import RUNTIME
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.ratelimit import STAND_ASIDE
from plugins.webchat.adapter import WebchatAdapter
from plugins.webchat.config import WebchatConfig
from tests.api.conftest import BASE_CONFIG, Build, Gateway, GatewayFactory
from tests.store.redis_server import RedisServer

SITE = '{name: site, type: webchat, no_agent_timeout: 5m, allowed_origins: ["https://shop.example.com"]}'


def limited(session: str | None = None, message: str | None = None, proxies: str = "") -> str:
    """BASE_CONFIG with the web chat's rates (None: the key is left out, the default holds)."""
    keys = "".join(
        f", {key}: {value}"
        for key, value in (("session_rate_limit", session), ("message_rate_limit", message))
        if value is not None
    )
    config = BASE_CONFIG.replace(SITE, SITE[:-1] + keys + "}")
    assert config != BASE_CONFIG or not keys
    if proxies:
        config = config.replace(
            'server: {public_url: "http://gw.test"}',
            f'server: {{public_url: "http://gw.test", trusted_proxies: {proxies}}}',
        )
    return config


async def open_session(gw: Gateway, forwarded_for: str | None = None, **body: Any) -> Any:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    resp = await gw.client.post("/webchat/site/session", json=body, headers=headers)
    return resp


async def next_frame(ws: ClientWebSocketResponse) -> dict[str, Any]:
    """The next ack or error frame (state updates of the conversation pass by meanwhile)."""
    async with asyncio.timeout(5):
        while True:
            data: dict[str, Any] = json.loads((await ws.receive()).data)
            if data["type"] in ("ack", "error"):
                return data


async def test_sessions_past_the_rate_get_429_with_retry_after(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(limited(session="3/hour"))
    tokens = []
    for _ in range(3):
        resp = await open_session(gw, display_name="Ana")
        assert resp.status == 201
        tokens.append((await resp.json())["token"])
    with capture_logs() as logs:
        refused = await open_session(gw, display_name="Ana")
        resumed = await open_session(gw, token=tokens[0])  # resuming counts too
    for resp in (refused, resumed):
        assert resp.status == 429
        body = await resp.json()
        assert body["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 3600
        assert body["error"]["retry_after"] == int(resp.headers["Retry-After"])
    # A widget on another site must be able to read the wait (widget audit): its script
    # sees a response header only if the response exposes it.
    across = await gw.client.post(
        "/webchat/site/session", json={}, headers={"Origin": "https://shop.example.com"}
    )
    assert across.status == 429
    assert across.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    exposed = {h.strip() for h in across.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-Request-Id"} <= exposed
    lines = [e for e in logs if e["event"] == "webchat.rate_limited"]
    assert [(e["limit"], e["client"]) for e in lines] == [("session", "127.0.0.1")] * 2


async def test_an_untrusted_peer_cannot_choose_its_address(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limited(session="2/hour"))
    statuses = [(await open_session(gw, forwarded_for=f"198.51.100.{i}")).status for i in range(3)]
    assert statuses == [201, 201, 429]


async def test_behind_a_trusted_proxy_each_client_has_its_own_count(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(limited(session="2/hour", proxies='["127.0.0.0/8"]'))
    assert (await open_session(gw, forwarded_for="203.0.113.5")).status == 201
    # What the client wrote left of the address our proxy saw is not believed.
    assert (await open_session(gw, forwarded_for="10.9.9.9, 203.0.113.5")).status == 201
    assert (await open_session(gw, forwarded_for="203.0.113.5")).status == 429
    assert (await open_session(gw, forwarded_for="192.0.2.77, 203.0.113.5")).status == 429
    assert (await open_session(gw, forwarded_for="203.0.113.6")).status == 201
    # A chain through two of our proxies still counts the client before them.
    assert (await open_session(gw, forwarded_for="203.0.113.6, 127.0.0.9")).status == 201
    assert (await open_session(gw, forwarded_for="203.0.113.6, 127.0.0.9")).status == 429


async def test_messages_past_the_rate_are_refused_and_not_stored(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(limited(message="2/hour"))
    visitor = await gw.visitor("Ana")
    ws = await gw.client.ws_connect(f"/webchat/site/ws?token={visitor['token']}")
    for n in (1, 2):
        await ws.send_json({"type": "message", "text": f"hola {n}", "client_id": f"c{n}"})
        assert (await next_frame(ws))["type"] == "ack"
    await ws.send_json({"type": "message", "text": "hola 3", "client_id": "c3"})
    refused = await next_frame(ws)
    assert refused["type"] == "error" and refused["code"] == "rate_limited"
    assert refused["client_id"] == "c3" and refused["retry_after"] >= 1
    assert isinstance(refused["retry_after"], int)  # whole seconds, as over REST
    await ws.send_str("{not json")  # the socket is still open and answering
    assert (await next_frame(ws))["code"] == "invalid_request"
    resp = await gw.client.post(
        "/webchat/site/messages",
        json={"text": "hola 4", "client_id": "c4"},
        headers={"Authorization": f"Bearer {visitor['token']}"},
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"]["code"] == "rate_limited"
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    _, conversation = await gw.get(
        "maria", f"/api/v1/conversations/{inbox['conversations'][0]['id']}"
    )
    assert [m["text"] for m in conversation["messages"]] == ["hola 1", "hola 2"]
    # A resend of a stored message past the rate still gets its ack (it may be what was lost).
    await ws.send_json({"type": "message", "text": "hola 2", "client_id": "c2"})
    again = await next_frame(ws)
    assert again["type"] == "ack" and again["message"]["text"] == "hola 2"
    other = await gw.visitor("Bea")  # another visitor has a count of their own
    await gw.visitor_says(other["token"], "hola", "b1")
    await ws.close()


async def test_resends_of_a_stored_message_do_not_use_up_the_rate(
    make_gateway: GatewayFactory,
) -> None:
    """A widget resends what was not acknowledged after a flaky reconnect. Each resend of a
    stored message used to count: a visitor who resent one message 35 times (each acked as
    the same message) was then refused their next one for a minute (audit)."""
    gw = await make_gateway(limited(message="2/hour"))
    visitor = await gw.visitor("Ana")
    ws = await gw.client.ws_connect(f"/webchat/site/ws?token={visitor['token']}")
    await ws.send_json({"type": "message", "text": "hola", "client_id": "c1"})
    first = await next_frame(ws)
    assert first["type"] == "ack"
    for _ in range(5):
        await ws.send_json({"type": "message", "text": "hola", "client_id": "c1"})
        again = await next_frame(ws)
        assert again["type"] == "ack" and again["message"]["id"] == first["message"]["id"]
    resp = await gw.client.post(  # and over REST
        "/webchat/site/messages",
        json={"text": "hola", "client_id": "c1"},
        headers={"Authorization": f"Bearer {visitor['token']}"},
    )
    assert resp.status in (200, 201), await resp.text()
    await ws.send_json({"type": "message", "text": "second", "client_id": "c2"})
    assert (await next_frame(ws))["type"] == "ack"  # the rate's second message
    await ws.send_json({"type": "message", "text": "third", "client_id": "c3"})
    assert (await next_frame(ws))["code"] == "rate_limited"  # and the limit still holds
    await ws.close()


async def test_copies_of_a_message_sent_at_once_use_the_rate_once(
    make_gateway: GatewayFactory,
) -> None:
    """Re-audit: four copies of one message posted at the same moment (a client retrying
    while its first request is in flight) stored one message but used four of the rate, and
    the visitor's next new messages were refused."""
    gw = await make_gateway(limited(message="3/hour"))
    visitor = await gw.visitor("Ana")
    headers = {"Authorization": f"Bearer {visitor['token']}"}

    async def post(text: str, client_id: str) -> int:
        body = {"text": text, "client_id": client_id}
        resp = await gw.client.post("/webchat/site/messages", json=body, headers=headers)
        return resp.status

    copies = await asyncio.gather(*(post("hola", "q") for _ in range(4)))
    assert sorted(copies) == [201, 201, 201, 201]
    assert [await post("second", "r"), await post("third", "s")] == [201, 201]
    assert await post("fourth", "t") == 429  # and the limit still holds
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    _, conversation = await gw.get(
        "maria", f"/api/v1/conversations/{inbox['conversations'][0]['id']}"
    )
    assert [m["text"] for m in conversation["messages"]] == ["hola", "second", "third"]


async def test_null_turns_a_limit_off(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limited(session="null", message="null"))
    statuses = {(await open_session(gw)).status for _ in range(70)}  # above the default 60
    assert statuses == {201}


async def test_two_gateways_on_one_redis_share_the_count(redis_alone: RedisServer) -> None:
    from aiohttp.test_utils import TestClient

    from tests.api.conftest import start_gateway

    clients: list[TestClient] = []
    config = limited(session="2/hour").replace("sqlite:///{db}", redis_alone.url)
    try:
        node_a = await start_gateway(config, clients)
        node_b = await start_gateway(config, clients)
        assert (await open_session(node_a)).status == 201
        assert (await open_session(node_b)).status == 201
        assert (await open_session(node_a)).status == 429
        assert (await open_session(node_b)).status == 429
    finally:
        for client in clients:
            await client.close()


async def test_an_unreachable_limiter_lets_visitors_in_and_says_so(
    build: Build, redis_alone: RedisServer
) -> None:
    gw = await build()
    assert (await open_session(gw)).status == 201
    redis_alone.kill()
    with capture_logs() as logs:
        resp = await open_session(gw, display_name="Ana")
        assert resp.status == 201  # a session needs no store; a limit must not turn into an outage
        # Then the limiter stands aside a while: during a hang, each visitor would otherwise
        # wait out its time-out first.
        assert (await open_session(gw)).status == 201
    assert [e["scope"] for e in logs if e["event"] == "ratelimit.storage_unavailable"] == [
        "webchat:site:session"
    ]
    limiter = gw.runtime.limiter
    now = limiter.monotonic()
    limiter.monotonic = lambda: now + STAND_ASIDE
    with capture_logs() as logs:  # ...and asks again after it
        assert (await open_session(gw)).status == 201
    assert len([e for e in logs if e["event"] == "ratelimit.storage_unavailable"]) == 1


def test_rates_are_config_values_and_a_wrong_one_says_what_is_expected() -> None:
    models = config_models(channel_types(get_plugin_manager()))
    text = limited(session='"5 per second"', message="null").replace("{db}", "gw.db")
    site = parse_config(text, "config.yaml", models, env={}).channels[0]
    assert isinstance(site, WebchatConfig)
    assert (site.session_rate_limit, site.message_rate_limit) == ("5 per second", None)
    with pytest.raises(ConfigError) as caught:
        parse_config(limited(session="lots"), "config.yaml", models, env={})
    assert "config.yaml: channels[0].session_rate_limit: " in str(caught.value)
    assert "expected a rate such as '30/minute'" in str(caught.value)


async def test_typing_frames_past_their_rate_are_dropped(gw: Gateway) -> None:
    """Each typing frame is a store read and a fan-out to every node: 20 a minute reach the
    agents, the rest are dropped without a word (the indicator only lasts seconds)."""
    from tests.api.test_stream_presence import open_stream

    sockets = {}
    for name in ("Ana", "Bea"):
        visitor = await gw.visitor(name)
        ws = await gw.client.ws_connect(f"/webchat/site/ws?token={visitor['token']}")
        await ws.send_json({"type": "message", "text": "hola", "client_id": "c1"})
        assert (await next_frame(ws))["type"] == "ack"
        sockets[name] = ws
    agent = await open_stream(gw, "maria")
    for _ in range(25):
        await sockets["Ana"].send_json({"type": "typing"})
    await sockets["Ana"].send_json({"type": "message", "text": "sigo", "client_id": "c2"})
    assert (await next_frame(sockets["Ana"]))["type"] == "ack"  # her typing frames are handled
    await sockets["Bea"].send_json({"type": "typing"})  # fanned out after all of Ana's
    seen = 0
    async with asyncio.timeout(5):
        while True:
            event = json.loads((await agent.receive()).data)
            if event["type"] != "conversation.typing":
                continue
            if event["conversation"]["contact"]["display_name"] == "Bea":
                break
            seen += 1
    assert seen == 20
    for ws in (*sockets.values(), agent):
        await ws.close()


def capped(visitor: int | None, address: int | None) -> str:
    keys = f", max_sockets_per_visitor: {visitor}, max_sockets_per_address: {address}"
    config = BASE_CONFIG.replace(SITE, SITE[:-1] + keys.replace("None", "null") + "}")
    assert config != BASE_CONFIG
    return config


async def first_visitor(gw: Gateway) -> WebchatAdapter:
    """The web chat channel `site` of the gateway under test."""
    adapter = gw.client.app[RUNTIME].adapters["site"]
    assert isinstance(adapter, WebchatAdapter)
    return adapter


async def socket_status(gw: Gateway, token: str) -> tuple[int, Any]:
    """Open a visitor socket: 101 and the socket, or the refusal's status and body."""
    resp = await gw.upgrade(f"/webchat/site/ws?token={token}")
    if resp.status == 101:
        return 101, resp
    return resp.status, await resp.json()


async def test_sockets_past_a_visitors_cap_are_refused_before_the_upgrade(
    make_gateway: GatewayFactory,
) -> None:
    """One visitor token could open sockets until the process ran out of descriptors."""
    gw = await make_gateway(capped(visitor=2, address=None))
    session = await (await open_session(gw, display_name="Ana")).json()
    token = session["token"]
    first = await gw.client.ws_connect(f"/webchat/site/ws?token={token}")
    second = await gw.client.ws_connect(f"/webchat/site/ws?token={token}")
    with capture_logs() as logs:
        status, body = await socket_status(gw, token)
    assert status == 429
    assert body["error"]["code"] == "too_many_connections"
    refusals = [e for e in logs if e["event"] == "webchat.too_many_connections"]
    assert [(e["per"], e["peer"]) for e in refusals] == [("visitor", "127.0.0.1")]
    assert token not in repr(logs)
    other = (await (await open_session(gw, display_name="Bea")).json())["token"]
    await (await gw.client.ws_connect(f"/webchat/site/ws?token={other}")).close()
    await first.close()
    visitor = (await first_visitor(gw)).sockets_per_visitor
    await asyncio.wait_for(visitor.wait_until(session["visitor_id"], 1), 5)
    third = await gw.client.ws_connect(f"/webchat/site/ws?token={token}")  # room again
    for ws in (second, third):
        await ws.close()


async def test_sockets_past_an_addresss_cap_are_refused(make_gateway: GatewayFactory) -> None:
    """Sessions are cheap (60 a minute per address by default): the address has a cap too."""
    gw = await make_gateway(capped(visitor=None, address=3))
    sockets = []
    for name in ("Ana", "Bea", "Caro"):
        token = (await (await open_session(gw, display_name=name)).json())["token"]
        sockets.append(await gw.client.ws_connect(f"/webchat/site/ws?token={token}"))
    token = (await (await open_session(gw, display_name="Dora")).json())["token"]
    status, body = await socket_status(gw, token)
    assert (status, body["error"]["code"]) == (429, "too_many_connections")
    assert "address" in body["error"]["message"]
    await sockets.pop().close()
    per_address = (await first_visitor(gw)).sockets_per_address
    await asyncio.wait_for(per_address.wait_until("127.0.0.1", 2), 5)
    sockets.append(await gw.client.ws_connect(f"/webchat/site/ws?token={token}"))
    for ws in sockets:
        await ws.close()


def test_socket_caps_are_validated_and_default_to_a_cap() -> None:
    site = WebchatConfig(name="site")
    assert (site.max_sockets_per_visitor, site.max_sockets_per_address) == (8, 200)
    off = WebchatConfig(name="site", max_sockets_per_visitor=None, max_sockets_per_address=None)
    assert off.max_sockets_per_address is None
    with pytest.raises(ValueError):
        WebchatConfig(name="site", max_sockets_per_visitor=0)
