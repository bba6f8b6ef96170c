"""The real gateway (real ingest, a real store, loopback HTTP) with a Twilio and a Meta WhatsApp
channel whose `api_base_url` points at the stand-in provider APIs of tests/whatsapp.

`make_wa` builds one, on each store kind (a SQLite file, a real Redis: every test here runs on
both); several may share a database (restart tests). The clock is manual and the scheduler is
driven by hand (`runtime.scheduler.run_once()`), as in tests/api.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.outbound import RetryPolicy
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import RuntimeOptions
from tests.api.conftest import TOKENS, Gateway, close_gateway, sha
from tests.conftest import STORE_KINDS, record_counts, store_url
from tests.whatsapp.conftest import fake_graph, fake_twilio  # noqa: F401  (fixtures)
from tests.whatsapp.fakes import Call, FakeGraph, FakeTwilio
from tests.whatsapp.support import (
    META_APP_SECRET,
    META_TOKEN,
    META_VERIFY,
    PUBLIC_URL,
    TWILIO_SID,
    TWILIO_TOKEN,
    meta_sign,
    twilio_sign,
)

TWILIO = "wa-twilio"
META = "wa-cloud"
TWILIO_URL = f"{PUBLIC_URL}/webhooks/{TWILIO}"
TWILIO_NUMBER = "whatsapp:+14155238886"
META_PHONE_ID = "1122334455667"

ENV = {
    "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "WA_TOKEN": META_TOKEN,
    "WA_APP_SECRET": META_APP_SECRET,
    "WA_VERIFY": META_VERIFY,
}

SIGNED = "signed"
"""Default of the `signature` arguments below: sign correctly."""


def wa_config(
    *,
    store: str,
    twilio_base: str,
    graph_base: str,
    phone_number_id: str = META_PHONE_ID,
    request_timeout: str = "5s",
    extra_channels: str = "",
) -> str:
    """config.yaml for the gateway under test: both providers, the queues and agents of
    tests/api, secrets as `${VAR}` like ops write them. `extra_channels` are more channel
    lines; `@GRAPH_BASE@` in them is the stand-in Graph API's URL."""
    extra_channels = extra_channels.replace("@GRAPH_BASE@", graph_base)
    return f"""
server: {{public_url: "{PUBLIC_URL}"}}
store: {{url: "{store}"}}
presence: {{agent_disconnect_grace: 30s}}
channels:
  - {{name: {TWILIO}, type: whatsapp, provider: twilio, account_sid: "{TWILIO_SID}",
     auth_token: ${{TWILIO_AUTH_TOKEN}}, from: "{TWILIO_NUMBER}", reply_window: 24h,
     api_base_url: "{twilio_base}", request_timeout: {request_timeout}}}
  - {{name: {META}, type: whatsapp, provider: cloud_api, phone_number_id: "{phone_number_id}",
     access_token: ${{WA_TOKEN}}, app_secret: ${{WA_APP_SECRET}}, verify_token: ${{WA_VERIFY}},
     api_base_url: "{graph_base}", request_timeout: {request_timeout}}}
{extra_channels}
queues:
  - {{name: support, distribution: manual}}
  - {{name: sales, distribution: automatic, strategy: least_busy}}
routing:
  - {{if: {{text: "(?i)price|precio"}}, queue: sales}}
  - {{queue: support}}
agents:
  - {{id: maria, name: Maria, token_sha256: "{sha(TOKENS["maria"])}",
      queues: [support, sales], max_active: 5}}
  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",
      queues: [support, sales], max_active: 5}}
  - {{id: ana, name: Ana, token_sha256: "{sha(TOKENS["ana"])}", queues: [sales], max_active: 1}}
"""


@dataclass
class WaGateway:
    """A running gateway plus the stand-ins it sends to, with helpers in the provider's voice."""

    gw: Gateway
    twilio: FakeTwilio
    graph: FakeGraph
    phone_number_id: str = META_PHONE_ID

    @property
    def client(self) -> TestClient:
        return self.gw.client

    @property
    def clock(self) -> ManualClock:
        return self.gw.clock

    # provider -> gateway --------------------------------------------------------------------
    async def post_meta(
        self, body: bytes, *, signature: str | None = SIGNED, channel: str = META
    ) -> aiohttp.ClientResponse:
        """POST a Meta webhook body, signed with the app secret unless told otherwise."""
        headers = {"Content-Type": "application/json"}
        if signature == SIGNED:
            headers["X-Hub-Signature-256"] = meta_sign(body)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return await self.client.post(f"/webhooks/{channel}", data=body, headers=headers)

    async def post_twilio(
        self,
        pairs: list[tuple[str, str]],
        *,
        body: bytes | None = None,
        signature: str | None = SIGNED,
        url: str = TWILIO_URL,
    ) -> aiohttp.ClientResponse:
        """POST a Twilio form webhook to the path of `url`, signed over `url` as Twilio does."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature == SIGNED:
            headers["X-Twilio-Signature"] = twilio_sign(url, pairs)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        data = body if body is not None else urlencode(pairs).encode()
        return await self.client.post(URL(url).path_qs, data=data, headers=headers)

    async def customer_meta(
        self, wamid: str, text: str, *, phone: str = "5511999990000", name: str = "Ana", ts: int
    ) -> None:
        body = meta_messages(
            [meta_text(wamid, text, phone=phone, ts=ts)],
            name=name,
            phone_number_id=self.phone_number_id,
        )
        resp = await self.post_meta(body)
        assert resp.status == 200, await resp.text()

    async def customer_twilio(
        self, sid: str, text: str, *, phone: str = "+5511999990000", name: str = "Ana"
    ) -> None:
        resp = await self.post_twilio(twilio_inbound(sid, text, phone=phone, name=name))
        assert resp.status == 200, await resp.text()

    # agent side --------------------------------------------------------------------------------
    async def events(self, after: str | None = None) -> list[dict[str, Any]]:
        """Every event of the integrators' log after `after`, paging by cursor."""
        found: list[dict[str, Any]] = []
        cursor = after
        while True:
            query = f"?after={cursor}" if cursor else ""
            status, page = await self.gw.get("maria", f"/api/v1/events{query}")
            assert status == 200, page
            if not page["events"]:
                return found
            found.extend(page["events"])
            cursor = page["cursor"]

    async def received(self) -> list[dict[str, Any]]:
        """The `message.received` events, in log order."""
        return [e for e in await self.events() if e["type"] == "message.received"]

    async def conversation(self, conversation_id: str, agent: str = "maria") -> dict[str, Any]:
        status, body = await self.gw.get(agent, f"/api/v1/conversations/{conversation_id}")
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def inbox(self, state: str, agent: str = "maria") -> list[dict[str, Any]]:
        status, body = await self.gw.get(agent, f"/api/v1/inbox?state={state}")
        assert status == 200, body
        result: list[dict[str, Any]] = body["conversations"]
        return result

    async def conversation_of(self, channel: str, address: str) -> str:
        """The id of the latest conversation of a contact on a channel (from the event log)."""
        for event in reversed(await self.events()):
            conv = event.get("conversation") or {}
            if conv.get("channel") == channel and conv["contact"]["address"] == address:
                return str(conv["id"])
        raise AssertionError(f"no conversation for {address} on {channel}")

    async def accept(self, conversation_id: str, agent: str = "maria") -> None:
        status, body = await self.gw.post(agent, f"/api/v1/conversations/{conversation_id}/accept")
        assert status == 200, body

    async def reply(
        self, conversation_id: str, body: dict[str, Any], agent: str = "maria"
    ) -> tuple[int, dict[str, Any]]:
        status, answer = await self.gw.post(
            agent, f"/api/v1/conversations/{conversation_id}/messages", body
        )
        return status, answer

    async def open_conversation(
        self,
        channel: str,
        *,
        pid: str,
        text: str = "Hola",
        phone: str = "+5511999990000",
        ts: int | None = None,
    ) -> str:
        """A customer writes (Meta: at provider time `ts`, default now); Maria accepts."""
        if channel == META:
            when = ts if ts is not None else int(self.clock.now().timestamp())
            await self.customer_meta(pid, text, phone=phone.lstrip("+"), ts=when)
        else:
            await self.customer_twilio(pid, text, phone=phone)
        conversation_id = await self.conversation_of(channel, phone)
        await self.accept(conversation_id)
        return conversation_id

    def fake(self, channel: str) -> FakeTwilio | FakeGraph:
        return self.twilio if channel == TWILIO else self.graph

    async def send_text(
        self, conversation_id: str, channel: str, *, provider_id: str, text: str = "Hello Ana"
    ) -> str:
        """Maria replies; the stand-in accepts it under `provider_id`; return our message id."""
        fake = self.fake(channel)
        fake.next_ids.append(provider_id)
        status, body = await self.reply(conversation_id, {"text": text})
        assert status == 202, body
        await self.gw.settle()
        message = await self.message(conversation_id, body["message"]["id"])
        assert message["provider_message_id"] == provider_id, message
        return str(message["id"])

    async def message(self, conversation_id: str, message_id: str) -> dict[str, Any]:
        conv = await self.conversation(conversation_id)
        (found,) = [m for m in conv["messages"] if m["id"] == message_id]
        return dict(found)

    async def counts(self) -> dict[str, int]:
        """Conversations, messages, events, orphan statuses and deadlines the store holds."""
        return await record_counts(self.gw.runtime.store)


WaFactory = Callable[..., Awaitable[WaGateway]]


@pytest.fixture(params=STORE_KINDS)
async def make_wa(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fake_twilio: FakeTwilio,  # noqa: F811
    fake_graph: FakeGraph,  # noqa: F811
) -> AsyncIterator[WaFactory]:
    """Build real gateways on loopback, on each store kind; `db` names the database (reuse it to
    restart)."""
    clients: list[TestClient] = []
    types = channel_types(get_plugin_manager())

    async def factory(
        *,
        db: str = "gw.db",
        phone_number_id: str = META_PHONE_ID,
        request_timeout: str = "5s",
        start: datetime | None = None,
        extra_channels: str = "",
    ) -> WaGateway:
        text = wa_config(
            store=store_url(request, request.param, tmp_path / db),
            twilio_base=fake_twilio.base_url,
            graph_base=fake_graph.base_url,
            phone_number_id=phone_number_id,
            request_timeout=request_timeout,
            extra_channels=extra_channels,
        )
        config = parse_config(text, "config.yaml", config_models(types), env=ENV)
        clock = ManualClock(start)
        options = RuntimeOptions(
            retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002), run_scheduler=False
        )
        app = create_app(config, types, clock=clock, options=options)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        gw = Gateway(client, app[RUNTIME], clock)
        return WaGateway(gw, fake_twilio, fake_graph, phone_number_id)

    yield factory
    fake_twilio.release()
    fake_graph.release()
    for client in clients:
        await close_gateway(client)


@pytest.fixture
async def wa(make_wa: WaFactory) -> WaGateway:
    return await make_wa()


# payloads in the providers' shapes ------------------------------------------------------------


def meta_text(wamid: str, text: str, *, phone: str = "5511999990000", ts: int) -> dict[str, Any]:
    """One `messages[]` item of type text, as Meta sends it."""
    return {
        "from": phone,
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
    }


def meta_value(
    *,
    messages: Iterable[dict[str, Any]] = (),
    statuses: Iterable[dict[str, Any]] = (),
    contacts: Iterable[tuple[str, str]] = (),
    phone_number_id: str = META_PHONE_ID,
) -> dict[str, Any]:
    """One `changes[].value`; `contacts` are (wa_id, profile name) pairs."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
    }
    if contacts:
        value["contacts"] = [{"profile": {"name": n}, "wa_id": w} for w, n in contacts]
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return value


def meta_envelope(*entries: list[dict[str, Any]]) -> bytes:
    """The webhook body: one entry per argument, each a list of `changes[].value` objects."""
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": f"WABA{i}",
                    "changes": [{"field": "messages", "value": value} for value in values],
                }
                for i, values in enumerate(entries)
            ],
        }
    )


def meta_messages(
    messages: list[dict[str, Any]], *, name: str = "Ana", phone_number_id: str = META_PHONE_ID
) -> bytes:
    """A webhook carrying these messages, with a contacts entry per distinct sender."""
    senders = dict.fromkeys(str(m["from"]) for m in messages)
    value = meta_value(
        messages=messages,
        contacts=[(s, name) for s in senders],
        phone_number_id=phone_number_id,
    )
    return meta_envelope([value])


def meta_status(
    wamid: str, status: str, *, ts: int, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One `statuses[]` item."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": "5511999990000",
    }
    if errors:
        item["errors"] = errors
    return item


def meta_statuses(*items: dict[str, Any]) -> bytes:
    return meta_envelope([meta_value(statuses=items)])


def twilio_inbound(
    sid: str, text: str, *, phone: str = "+5511999990000", name: str = "Ana"
) -> list[tuple[str, str]]:
    """An inbound WhatsApp message as Twilio posts it (form pairs)."""
    return [
        ("SmsMessageSid", sid),
        ("NumMedia", "0"),
        ("ProfileName", name),
        ("MessageType", "text"),
        ("SmsSid", sid),
        ("WaId", phone.lstrip("+")),
        ("SmsStatus", "received"),
        ("Body", text),
        ("To", TWILIO_NUMBER),
        ("NumSegments", "1"),
        ("ReferralNumMedia", "0"),
        ("MessageSid", sid),
        ("AccountSid", TWILIO_SID),
        ("From", f"whatsapp:{phone}"),
        ("ApiVersion", "2010-04-01"),
    ]


def twilio_status(sid: str, status: str, *, error_code: str | None = None) -> list[tuple[str, str]]:
    """A status callback as Twilio posts it to the send's StatusCallback."""
    pairs = [
        ("ChannelPrefix", "whatsapp"),
        ("ApiVersion", "2010-04-01"),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("ChannelToAddress", "+55119999XXXXX"),
        ("To", "whatsapp:+5511999990000"),
        ("MessageSid", sid),
        ("AccountSid", TWILIO_SID),
        ("From", TWILIO_NUMBER),
    ]
    if error_code:
        pairs.append(("ErrorCode", error_code))
    return pairs


async def twilio_callback(wa: WaGateway, call: Call, sid: str, status: str) -> int:
    """Post a status to the StatusCallback the send named, signed over that URL, as Twilio does
    (the stand-in reaches the gateway at its loopback address, like a proxy would)."""
    (callback,) = call.form["StatusCallback"]
    resp = await wa.post_twilio(twilio_status(sid, status), url=callback)
    return resp.status


async def next_event(
    ws: aiohttp.ClientWebSocketResponse, accept: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Read the agent stream until an event matches (bounded: a missing event fails)."""
    async with asyncio.timeout(10):
        while True:
            frame = await ws.receive_json()
            if accept(frame):
                result: dict[str, Any] = frame
                return result
