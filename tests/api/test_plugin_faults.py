"""A third-party channel with bugs must not take the gateway down with it.

An audit wrote a plugin from the docs and made it misbehave: a `send` that never returns (an
SDK call without a timeout), one that returns the provider's JSON instead of a `SendResult`, a
`stop` that hangs, a `health` that raises, a `start` that raises, and messages that break the
adapter contract. Each used to stall the scheduler, wedge shutdown, answer 500 for every
channel, or lose or resend messages. `FaultyAdapter` is such a plugin, its faults chosen by
its config section.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

import gateway.app
from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.channels import (
    BaseAdapter,
    ChannelConfig,
    ChannelContext,
    ChannelHealth,
    ChannelType,
    SendResult,
)
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.errors import ChannelStartError, ConfigError
from gateway.model import Contact, Conversation, DeliveryState, InboundMessage, Message
from gateway.outbound import RetryPolicy
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import Runtime, RuntimeOptions
from gateway.sink import AdapterContractError
from gateway.store.base import MESSAGE_TARGET, Deadline
from tests.api.conftest import TOKENS, sha


class FaultyConfig(ChannelConfig):
    fault: str = "none"


class FaultyAdapter(BaseAdapter):
    channel_type = "faulty_sms"
    provider = "faulty"

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.fault = getattr(context.config, "fault", "none")
        self.sends = 0
        self.hang = asyncio.Event()

    async def start(self) -> None:
        if self.fault == "start":
            raise RuntimeError("the SDK could not log in")
        if self.fault == "start_hangs":
            await self.hang.wait()
        if self.fault == "start_times_out":  # its own time-out, not the gateway's
            raise TimeoutError("login took too long")

    async def stop(self) -> None:
        if self.fault == "stop":
            await self.hang.wait()

    def routes(self) -> list[web.RouteDef]:
        if self.fault == "route":
            return [web.get("/webhooks/sms-status", self.handle_webhook)]
        return []

    async def handle_webhook(self, request: web.Request) -> web.StreamResponse:
        if self.fault == "webhook":
            raise KeyError("From")  # a payload the plugin did not expect
        if self.fault == "webhook_dict":
            return {"ok": True}  # type: ignore[return-value]
        return web.Response(status=200)

    def health(self) -> ChannelHealth:
        if self.fault == "health":
            raise KeyError("status")
        return ChannelHealth(ok=True)

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        self.sends += 1
        if self.fault == "send_hangs":
            await self.hang.wait()
        if self.fault == "send_dict":
            return {"sid": "SM1", "status": "queued"}  # type: ignore[return-value]
        if self.fault == "send_failed":
            return SendResult(provider_message_id=None, status=DeliveryState.FAILED)
        if self.fault == "send_queued_no_id":  # taken; a report will come (naming our id)
            return SendResult(provider_message_id=None, status=DeliveryState.QUEUED)
        if self.fault == "send_int_id":
            return SendResult(provider_message_id=123)  # type: ignore[arg-type]
        return SendResult(provider_message_id=f"faulty-{message.id}")


TYPES = {
    **channel_types(get_plugin_manager()),
    "faulty_sms": ChannelType("faulty_sms", FaultyConfig, FaultyAdapter, "1.0", "test"),
}
CONFIG = f"""
store: {{url: "sqlite:///{{db}}"}}
channels: [{{name: sms, type: faulty_sms, fault: {{fault}}}}]
queues: [{{name: support}}]
routing: [{{queue: support}}]
agents:
  - {{id: maria, token_sha256: "{sha(TOKENS["maria"])}", queues: [support]}}
"""
HEADERS = {"Authorization": f"Bearer {TOKENS['maria']}"}


def app_for(tmp_path: Path, fault: str, **options: Any) -> Any:
    text = CONFIG.replace("{db}", str(tmp_path / "gw.db")).replace("{fault}", fault)
    config = parse_config(text, "config.yaml", config_models(TYPES), env={})
    retry = RetryPolicy(attempts=2, initial=0.001, maximum=0.002, send_timeout=0.2)
    opts = RuntimeOptions(retry=retry, **{"run_scheduler": False, **options})
    return create_app(config, TYPES, clock=ManualClock(), options=opts)


def customer_message(runtime: Runtime, pid: str = "in-1", **changes: Any) -> InboundMessage:
    message = InboundMessage(
        channel="sms",
        channel_type="faulty_sms",
        provider="faulty",
        provider_message_id=pid,
        contact=Contact("+15550001"),
        sent_at=runtime.clock.now(),
        text="hola",
    )
    return replace(message, **changes)


async def reply(client: TestClient, runtime: Runtime) -> str:
    """The customer writes, maria accepts and replies: the reply's id."""
    sink = runtime.adapters["sms"].context.inbound
    result = await sink.message(customer_message(runtime))
    path = f"/api/v1/conversations/{result.conversation.id}"
    assert (await client.post(f"{path}/accept", headers=HEADERS)).status == 200
    resp = await client.post(f"{path}/messages", json={"text": "hola"}, headers=HEADERS)
    assert resp.status == 202
    message_id: str = (await resp.json())["message"]["id"]
    return message_id


async def failed_reply(client: TestClient, runtime: Runtime) -> Message:
    """A reply sent through the faulty channel, once its delivery is over: failed."""
    message_id = await reply(client, runtime)
    await runtime.outbound.drain()
    message = await runtime.store.get_message(message_id)
    assert message is not None and message.status == "failed"
    return message


@pytest.fixture
async def started(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[TestClient]:
    app = app_for(tmp_path, request.param)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize("started", ["send_hangs"], indirect=True)
async def test_a_send_that_never_returns_is_cut_off_and_fails_as_unavailable(
    started: TestClient,
) -> None:
    runtime = started.app[RUNTIME]
    message = await failed_reply(started, runtime)
    assert message.error_code == "channel_unavailable"
    assert "did not answer within" in (message.error_message or "")
    assert runtime.adapters["sms"].sends == 2  # each try bounded, then retried


@pytest.mark.parametrize("started", ["send_hangs"], indirect=True)
async def test_shutdown_and_the_scheduler_do_not_wait_for_a_hanging_send(
    started: TestClient,
) -> None:
    """Shutdown cuts a hanging send off (the message stays queued for its redelivery), and the
    redelivery deadline starts the send in the background: the scheduler's pass goes on
    firing the other deadlines (grace, windows) instead of waiting for it."""
    runtime = started.app[RUNTIME]
    runtime.outbound.retry = replace(runtime.outbound.retry, send_timeout=3600)
    message_id = await reply(started, runtime)
    async with asyncio.timeout(5):
        await runtime.outbound.drain(timeout=0.1)
    message = await runtime.store.get_message(message_id)
    assert message is not None and message.status == "queued"
    sends = runtime.adapters["sms"].sends
    deadline = Deadline(MESSAGE_TARGET + message_id, "deliver", datetime.now())
    async with asyncio.timeout(5):
        await runtime._on_deadline(deadline)  # returns at once, the send hanging behind it
        await runtime.outbound.drain(timeout=0.1)
    assert runtime.adapters["sms"].sends == sends + 1


@pytest.mark.parametrize("started", ["send_queued_no_id"], indirect=True)
async def test_a_send_taken_under_no_provider_id_does_not_hold_the_next_reply_back(
    started: TestClient,
) -> None:
    """A provider that takes a message as `queued` and gives no id of its own: the message
    carries our id for the provider's, so the next reply sees it left (it does not wait for
    it as for one still being sent), and a report naming our id finds it."""
    runtime = started.app[RUNTIME]
    first = await reply(started, runtime)
    await runtime.outbound.drain()
    taken = await runtime.store.get_message(first)
    assert taken is not None
    assert (taken.status, taken.provider_message_id) == ("queued", first)
    with capture_logs() as logs:
        await reply(started, runtime)
        async with asyncio.timeout(5):  # a wait for `first` would last outbound.longest
            await runtime.outbound.drain()
    assert not [e for e in logs if e["event"] == "outbound.waiting_for_earlier"]
    assert runtime.adapters["sms"].sends == 2


@pytest.mark.parametrize(
    ("started", "code"),
    [
        ("send_dict", "adapter_error"),
        ("send_int_id", "adapter_error"),
        ("send_failed", "send_failed"),
    ],
    indirect=["started"],
)
async def test_a_send_that_returns_something_else_fails_once_and_is_not_resent(
    started: TestClient, code: str
) -> None:
    runtime = started.app[RUNTIME]
    message = await failed_reply(started, runtime)
    assert message.error_code == code and message.error_message
    assert runtime.adapters["sms"].sends == 1


@pytest.mark.parametrize("started", ["health"], indirect=True)
async def test_a_health_check_that_raises_is_a_degraded_channel_not_a_500(
    started: TestClient,
) -> None:
    resp = await started.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["degraded"] == ["sms"] and body["channels"]["sms"]["ok"] is False
    resp = await started.get("/metrics")
    assert resp.status == 200
    assert 'gateway_channel_up{channel="sms"} 0.0' in await resp.text()


async def start_refused(tmp_path: Path, fault: str) -> ChannelStartError:
    """Start a gateway whose channel has `fault` at start; the error that stopped it."""
    client = TestClient(TestServer(app_for(tmp_path, fault)))
    try:
        with pytest.raises(ChannelStartError) as refused:
            async with asyncio.timeout(10):
                await client.start_server()
    finally:
        await client.close()
    return refused.value


async def test_a_channel_that_cannot_start_is_named(tmp_path: Path) -> None:
    refused = await start_refused(tmp_path, "start")
    assert re.search("channel 'sms' \\(faulty_sms\\) could not start", str(refused))


async def test_a_start_that_hangs_is_named_and_does_not_hold_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start() that never returned kept the node from listening for good, and the log ended
    at the channels that had started, naming nobody."""
    monkeypatch.setattr(gateway.app, "ADAPTER_START_TIMEOUT", 0.1)
    with capture_logs() as logs:
        refused = await start_refused(tmp_path, "start_hangs")
    assert str(refused) == "channel 'sms' (faulty_sms) did not start within 0.1 s"
    assert any(line["event"] == "channel.start_timeout" for line in logs)


async def test_an_adapters_own_time_out_at_start_is_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.app, "ADAPTER_START_TIMEOUT", 10.0)
    refused = await start_refused(tmp_path, "start_times_out")
    assert re.search("could not start: TimeoutError: login took", str(refused))


async def test_a_stop_that_hangs_does_not_hold_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.app, "ADAPTER_STOP_TIMEOUT", 0.1)
    client = TestClient(TestServer(app_for(tmp_path, "stop")))
    await client.start_server()
    async with asyncio.timeout(10):
        await client.close()


@pytest.mark.parametrize("started", ["none"], indirect=True)
async def test_messages_that_break_the_adapter_contract_are_refused_before_storing(
    started: TestClient,
) -> None:
    runtime = started.app[RUNTIME]
    sink = runtime.adapters["sms"].context.inbound
    naive = datetime(2026, 11, 27, 12, 0)
    for changes, words in [
        ({"provider_message_id": ""}, "provider_message_id"),
        ({"contact": Contact("")}, "contact.address"),
        ({"sent_at": naive}, "timezone-aware"),
        ({"channel": "elsewhere"}, "'elsewhere'"),
        ({"raw": {"when": object()}}, "JSON"),
    ]:
        with pytest.raises(AdapterContractError, match=words):
            await sink.message(customer_message(runtime, pid=f"bad-{words}", **changes))
    assert await runtime.store.read_events(None) == []  # nothing half-written
    await sink.message(customer_message(runtime))  # a good one still goes in
    assert len(await runtime.store.read_events(None)) == 2


@pytest.mark.parametrize("started", ["webhook"], indirect=True)
async def test_a_webhook_the_plugin_fails_on_is_the_documented_adapter_error(
    started: TestClient,
) -> None:
    """README's error table gives `adapter_error` (500) for a plugin's fault; an exception out
    of `handle_webhook` answered an undocumented `internal_error` (ops audit)."""
    with capture_logs() as logs:
        resp = await started.post("/webhooks/sms", data=b"From=%2B1555")
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert error["code"] == "adapter_error" and "'sms'" in error["message"]
    failed = [e for e in logs if e["event"] == "webhook.adapter_failed"]
    assert failed and failed[0]["channel"] == "sms" and failed[0]["log_level"] == "error"


@pytest.mark.parametrize("started", ["webhook_dict"], indirect=True)
async def test_a_webhook_answered_with_no_response_is_an_adapter_error(
    started: TestClient,
) -> None:
    """Re-audit: a handler returning a dict answered an undocumented 500 internal_error."""
    resp = await started.post("/webhooks/sms", data=b"From=%2B1555")
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "adapter_error"


def test_a_route_on_the_gateways_own_paths_is_refused(tmp_path: Path) -> None:
    """It would shadow `/webhooks/{channel}` (or be shadowed by it), silently."""
    with pytest.raises(ConfigError, match="routes /webhooks/sms-status, a path of the gateway"):
        app_for(tmp_path, "route")
