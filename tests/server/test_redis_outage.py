"""A gateway on a Redis that goes down or hangs: 503 `store_unavailable`, fast, nothing lost.

The gateway runs in this process on loopback HTTP (as in tests/api), with a Meta WhatsApp
channel, on a redis-server of the test's own that the test kills (an outage) or SIGSTOPs (a
hang) and then brings back. Webhooks are signed as Meta signs them. Log lines are captured with
structlog's `capture_logs`, as tests/api/test_logging.py does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from gateway.store.redis_batch import STORE_TIMEOUT
from tests.api.conftest import Gateway, close_gateway, start_gateway
from tests.store.redis_server import RedisServer
from tests.whatsapp.support import meta_sign
from tests.whatsapp_e2e.conftest import ENV, META, meta_messages, meta_text, wa_config

UNREACHABLE = "http://127.0.0.1:9"
"""The providers' API base: these tests never send."""
TWILIO_LIMIT = 14.0
"""Under Twilio's 15 s: a webhook answered later than that is lost (PROTOCOLS.md 1.4)."""

ORIGIN = "https://shop.example.com"
WEBCHAT = f'{{name: site, type: webchat, allowed_origins: ["{ORIGIN}"]}}'

Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def server(redis_alone: RedisServer) -> RedisServer:
    """A redis-server of this test's own, which the test may kill or pause."""
    return redis_alone


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(server: RedisServer) -> AsyncIterator[GatewayFactory]:
    clients: list[TestClient] = []

    async def factory(*, run_scheduler: bool = False) -> Gateway:
        text = wa_config(store=server.url, twilio_base=UNREACHABLE, graph_base=UNREACHABLE)
        text = text.replace("channels:\n", f"channels:\n  - {WEBCHAT}\n", 1)
        return await start_gateway(text, clients, env=ENV, run_scheduler=run_scheduler)

    yield factory
    for client in clients:
        await close_gateway(client)


def webhook(wamid: str, gw: Gateway) -> bytes:
    return meta_messages([meta_text(wamid, f"text of {wamid}", ts=int(gw.clock.now().timestamp()))])


async def post_webhook(gw: Gateway, body: bytes) -> tuple[int, Any, float]:
    """POST a signed Meta webhook: status, JSON body, seconds until the answer."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await gw.client.post(
        f"/webhooks/{META}",
        data=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": meta_sign(body)},
    )
    answer = await resp.json(content_type=None)
    return resp.status, answer, loop.time() - started


async def received(gw: Gateway, wamid: str) -> int:
    """How many `message.received` events the log holds for the provider's id `wamid`."""
    found, cursor = 0, None
    while True:
        status, page = await gw.get(
            "maria", "/api/v1/events" + (f"?after={cursor}" if cursor else "")
        )
        assert status == 200, page
        if not page["events"]:
            return found
        found += sum(
            1
            for e in page["events"]
            if e["type"] == "message.received" and e["message"]["provider_message_id"] == wamid
        )
        cursor = page["cursor"]


def tracebacks(logs: Logs, *prefixes: str) -> Logs:
    return [e for e in logs if e.get("exc_info") and str(e["event"]).startswith(prefixes)]


async def test_during_an_outage_the_api_answers_503_and_a_retry_is_stored_once(
    server: RedisServer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    status, answer, _ = await post_webhook(gw, webhook("wamid.first", gw))
    assert status == 200, answer
    _, inbox = await gw.get("maria", "/api/v1/inbox?state=waiting")
    conversation_id = inbox["conversations"][0]["id"]
    body = webhook("wamid.during", gw)

    server.kill()
    with capture_logs() as logs:
        status, answer, took = await post_webhook(gw, body)
        assert (status, answer["error"]["code"]) == (503, "store_unavailable"), answer
        assert took < 2.0  # refused connections fail at once
        for method, path in [
            ("GET", "/api/v1/inbox?state=waiting"),
            ("GET", f"/api/v1/conversations/{conversation_id}"),
            ("POST", f"/api/v1/conversations/{conversation_id}/accept"),
            ("GET", "/api/v1/events"),
        ]:
            resp = await gw.client.request(method, path, headers=gw.auth("maria"))
            error = (await resp.json())["error"]
            assert (resp.status, error["code"]) == (503, "store_unavailable"), (path, error)
        metrics = await gw.client.get("/metrics")
        text = await metrics.text()
        ready = await gw.client.get("/readyz")
    # /metrics still serves the process's own counters, without the gauges read from the store.
    assert metrics.status == 200
    assert 'gateway_webhooks_total{channel="wa-cloud",outcome="http_503"} 1.0' in text
    assert "gateway_agents_online NaN" in text
    assert "gateway_store_up 0.0" in text
    assert "gateway_conversations{" not in text
    assert ready.status == 503
    assert (await ready.json())["store_problem"] == "unreachable"  # down: refused at once

    # One line per refused request, none with a traceback.
    assert [e["event"] for e in logs if e["event"].startswith("webhook.")] == [
        "webhook.store_unavailable"
    ]
    refused = [e for e in logs if e["event"] == "http.refused"]
    assert [(e["status"], e["code"]) for e in refused] == [(503, "store_unavailable")] * 4
    assert [e["event"] for e in logs if e["event"].startswith("metrics.")] == [
        "metrics.store_unavailable"
    ]
    assert not tracebacks(logs, "")

    server.start()  # same port and AOF: the conversation is still there
    for _ in range(2):  # the provider's retry, and one more: the second is a duplicate
        status, answer, _ = await post_webhook(gw, body)
        assert status == 200, answer
    assert await received(gw, "wamid.during") == 1
    assert await received(gw, "wamid.first") == 1
    assert "gateway_store_up 1.0" in await (await gw.client.get("/metrics")).text()


@pytest.mark.slow
async def test_during_a_hang_a_webhook_gets_503_before_the_provider_gives_up(
    server: RedisServer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway()
    status, answer, _ = await post_webhook(gw, webhook("wamid.first", gw))
    assert status == 200, answer
    body = webhook("wamid.hung", gw)

    server.pause()
    try:
        with capture_logs() as logs:
            status, answer, took = await post_webhook(gw, body)
    finally:
        server.resume()
    # Not acknowledged: the provider retries it.
    assert (status, answer["error"]["code"]) == (503, "store_unavailable"), answer
    assert took < TWILIO_LIMIT
    assert took < STORE_TIMEOUT + 3.0, took
    assert [e["event"] for e in logs if e["event"].startswith("webhook.")] == [
        "webhook.store_unavailable"
    ]
    assert not tracebacks(logs, "webhook.", "http.", "ingest.")

    # A health check during the hang gets its 503 in time (Kubernetes waits 1 s by
    # default), and a scrape its counters, well before the store's own 5 s bound.
    server.pause()
    try:
        started = time.monotonic()
        ready = await gw.client.get("/readyz")
        ready_took = time.monotonic() - started
        started = time.monotonic()
        scrape = await (await gw.client.get("/metrics")).text()
        scrape_took = time.monotonic() - started
    finally:
        server.resume()
    readiness = await ready.json()
    assert ready.status == 503 and readiness["store"] == "unreachable"
    assert readiness["store_problem"] == "timeout"  # a hang: no answer in time
    assert ready_took < STORE_TIMEOUT / 2, ready_took
    assert "gateway_store_up 0.0" in scrape and "gateway_ingested_messages_total" in scrape
    assert scrape_took < STORE_TIMEOUT / 2 + 1, scrape_took

    # The write may have reached Redis before the answer: the retry then is a duplicate.
    for _ in range(2):
        status, answer, _ = await post_webhook(gw, body)
        assert status == 200, answer
    assert await received(gw, "wamid.hung") == 1


async def test_background_loops_log_an_outage_in_one_line_and_go_on(
    server: RedisServer, make_gateway: GatewayFactory
) -> None:
    gw = await make_gateway(run_scheduler=True)
    seen = {"hub.store_unavailable": asyncio.Event(), "timers.store_unavailable": asyncio.Event()}

    def notice(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if event["event"] in seen:
            seen[event["event"]].set()
        return event

    with capture_logs(processors=[notice]) as logs:
        server.kill()
        async with asyncio.timeout(15):  # the hub retries every second, the scheduler too
            for happened in seen.values():
                await happened.wait()
        server.start()
        # The loops go on: the hub fans out what is stored once Redis is back.
        status, answer, _ = await post_webhook(gw, webhook("wamid.after", gw))
        assert status == 200, answer
        async with asyncio.timeout(15):
            await gw.settle()

    loops = [e for e in logs if str(e["event"]).startswith(("hub.", "timers."))]
    assert {e["event"] for e in loops} <= set(seen), loops
    assert all(e["log_level"] == "warning" and "error" in e for e in loops), loops
    assert not tracebacks(logs, "hub.", "timers.")


async def test_web_chat_refuses_what_it_cannot_store_and_takes_the_resend(
    server: RedisServer, make_gateway: GatewayFactory
) -> None:
    """Plain HTTP: 503 with the CORS headers a browser needs to read it. The socket: an error
    frame, then close 1013 (try again later) so that the widget reconnects and resends."""
    gw = await make_gateway()
    resp = await gw.client.post("/webchat/site/session", json={"display_name": "Ana"})
    token = (await resp.json())["token"]
    headers = {"Authorization": f"Bearer {token}", "Origin": ORIGIN}
    ws = await gw.client.ws_connect(f"/webchat/site/ws?token={token}")
    # The socket reads what the visitor missed as it opens (nothing here). A message acked
    # over it comes after that read (issued first, on the same store): the socket is live.
    await ws.send_json({"type": "message", "text": "antes", "client_id": "c0"})
    started = await ws.receive_json()  # the chat it opens, then its ack
    assert (started["type"], started["change"]) == ("conversation", "created")
    assert (await ws.receive_json())["type"] == "ack"

    server.kill()
    with capture_logs() as logs:
        resp = await gw.client.post(
            "/webchat/site/messages", json={"text": "hola", "client_id": "c1"}, headers=headers
        )
        assert resp.status == 503
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert (await resp.json())["error"]["code"] == "store_unavailable"
        await ws.send_json({"type": "message", "text": "por socket", "client_id": "c2"})
        frame = await ws.receive_json()
        assert (frame["type"], frame["code"], frame["client_id"]) == (
            "error",
            "store_unavailable",
            "c2",
        )
        closing = await ws.receive()
        assert ws.close_code == 1013, closing
    assert [e["event"] for e in logs if e["event"].startswith("webchat.")] == [
        "webchat.store_unavailable"
    ] * 2
    assert not tracebacks(logs, "webchat.", "http.", "ingest.")

    server.start()
    ids = set()
    for client_id, text in [("c1", "hola"), ("c2", "por socket")] * 2:  # resent twice
        resp = await gw.client.post(
            "/webchat/site/messages", json={"text": text, "client_id": client_id}, headers=headers
        )
        assert resp.status == 201, await resp.text()
        ids.add((await resp.json())["message"]["id"])
    assert len(ids) == 2
