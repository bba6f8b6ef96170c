"""The real gateway (real ingest, a real store, loopback HTTP agent API) with one `email` channel
reading the test Dovecot over IMAP and sending to the test aiosmtpd.

The servers are the fixtures of tests/email (imported below, not re-implemented). `make_mail`
builds a gateway, on each store kind (a SQLite file, a real Redis: every test here runs on
both); several may share one database and one Dovecot (restart tests). The
clock is manual and the scheduler is driven by hand, as in tests/api. Tests never sleep to
wait for state: they wait on the store's event log (`wait_event`) or on the adapter's `synced`
condition (`adapter.wait_for`), both under a time limit that only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.model import Event
from gateway.outbound import RetryPolicy
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import RuntimeOptions
from plugins.email.adapter import EmailAdapter
from tests.api.conftest import TOKENS, Gateway, sha
from tests.conftest import STORE_KINDS, store_url
from tests.email.conftest import dovecot, mta, smtp_server  # noqa: F401  (fixtures)
from tests.email.servers import PASSWORD, USER, Dovecot, SmtpServer

CHANNEL = "support-mail"
ADDRESS = "support@gw.example.com"
LIMIT = 20
"""Seconds before a wait is declared hung (a safety net, never how state is awaited)."""


def mail_config(
    store: str,
    imap_server: Dovecot,
    smtp: SmtpServer,
    *,
    more_channels: str = "",
    channel_fields: dict[str, str] | None = None,
    **imap: Any,
) -> tuple[str, dict[str, str]]:
    """config.yaml for the gateway under test (on the store at url `store`) and the
    environment its `${VAR}`s read.

    `more_channels` is YAML for further channel list items (e.g. a web chat channel);
    `channel_fields` more keys of the email channel itself (e.g. `reply_window`)."""
    fields = "".join(f"    {key}: {value}\n" for key, value in (channel_fields or {}).items())
    settings = {"first_sync": "all", "timeout": "10s", **imap}
    extra_imap = "".join(f", {key}: {value}" for key, value in settings.items())
    text = f"""
server: {{public_url: "http://gw.test"}}
store: {{url: "{store}"}}
presence: {{agent_disconnect_grace: 30s}}
channels:
  - name: {CHANNEL}
    type: email
    address: {ADDRESS}
    from_name: ACME Support
    imap: {{host: 127.0.0.1, port: {imap_server.port}, tls: none, username: "{USER}",
            password: ${{IMAP_PASSWORD}}{extra_imap}}}
    smtp: {{host: 127.0.0.1, port: {smtp.port}, tls: none, timeout: 10s}}
{fields}{more_channels}
queues:
  - {{name: support, distribution: manual}}
  - {{name: sales, distribution: manual}}
routing:
  - {{if: {{type: email}}, queue: support}}
  - {{queue: sales}}
agents:
  - {{id: maria, name: Maria, token_sha256: "{sha(TOKENS["maria"])}",
      queues: [support, sales], max_active: 5}}
  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",
      queues: [support, sales], max_active: 5}}
"""
    return text, {"IMAP_PASSWORD": PASSWORD}


def customer_mail(
    *,
    message_id: str,
    subject: str = "Where is my order?",
    text: str = "Hello, where is my order 42?",
    sender: str = "Ana Souza <ana@customer.example>",
    date: datetime | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A plain customer mail to the support address, as a mail client would write it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ADDRESS
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime(2026, 11, 25, 6, 30).astimezone())
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    return msg.as_bytes()


@dataclass
class MailGateway:
    """A running gateway with an email channel, and helpers in the customer's and agent's voice."""

    gw: Gateway
    dovecot: Dovecot
    smtp: SmtpServer
    closed: bool = field(default=False)

    @property
    def adapter(self) -> EmailAdapter:
        adapter = self.gw.runtime.adapters[CHANNEL]
        assert isinstance(adapter, EmailAdapter)
        return adapter

    # customer -> gateway ----------------------------------------------------------------------
    async def deliver(self, raw: bytes) -> int:
        """Put one mail into the mailbox (IMAP APPEND, as a delivery would); return its UID."""
        return await self.dovecot.append(raw)

    # waiting on state -------------------------------------------------------------------------
    async def wait_event(self, predicate: Callable[[Event], bool]) -> Event:
        """Return the first logged event matching `predicate`, waiting for it if need be.

        Reads the store's event log from the start, so an event that happened before the call
        is found too (no race between an action and the wait for its effect).
        """
        store = self.gw.runtime.store
        after: str | None = None
        async with asyncio.timeout(LIMIT):
            while True:
                events = await store.wait_events(after, timeout=LIMIT)
                for event in events:
                    if predicate(event):
                        return event
                if events:
                    after = events[-1].cursor

    async def received(self, provider_message_id: str) -> Event:
        """Wait until the mail with this Message-ID is stored; return its `message.received`."""
        return await self.wait_event(
            lambda e: (
                e.type == "message.received"
                and e.message is not None
                and e.message.provider_message_id == provider_message_id
            )
        )

    async def all_received(self) -> list[Event]:
        """Every `message.received` event in the log, in order."""
        events = await self.gw.runtime.store.read_events(None, limit=10_000)
        return [e for e in events if e.type == "message.received"]

    async def wait_received(self, count: int) -> list[Event]:
        """Wait until at least `count` messages are in the log; return them all, in order."""
        store = self.gw.runtime.store
        seen = 0
        after: str | None = None
        async with asyncio.timeout(LIMIT):
            while seen < count:
                events = await store.wait_events(after, timeout=LIMIT)
                seen += sum(1 for e in events if e.type == "message.received")
                if events:
                    after = events[-1].cursor
        return await self.all_received()

    async def wait_synced(self, predicate: Callable[[], bool]) -> None:
        """Wait on the adapter's `synced` condition (passes, connection changes)."""
        await asyncio.wait_for(self.adapter.wait_for(predicate), LIMIT)

    # agent -> gateway -------------------------------------------------------------------------
    async def get(self, path: str, agent: str = "maria") -> Any:
        status, body = await self.gw.get(agent, path)
        assert status == 200, body
        return body

    async def inbox(self, state: str, agent: str = "maria") -> list[dict[str, Any]]:
        body = await self.get(f"/api/v1/inbox?state={state}", agent)
        conversations: list[dict[str, Any]] = body["conversations"]
        return conversations

    async def conversation(self, conversation_id: str, agent: str = "maria") -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/v1/conversations/{conversation_id}", agent)
        return body

    async def download(
        self, conversation_id: str, message_id: str, index: int, agent: str = "maria"
    ) -> tuple[int, bytes, str]:
        """An attachment through the agent API: status, body, Content-Type."""
        resp = await self.gw.client.get(
            f"/api/v1/conversations/{conversation_id}/messages/{message_id}/attachments/{index}",
            headers=self.gw.auth(agent),
        )
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def act(self, conversation_id: str, action: str, agent: str = "maria") -> Any:
        status, body = await self.gw.post(
            agent, f"/api/v1/conversations/{conversation_id}/{action}"
        )
        assert status == 200, body
        return body

    async def reply(self, conversation_id: str, text: str, agent: str = "maria") -> dict[str, Any]:
        """Send an agent reply through the API and wait until its delivery finished."""
        status, body = await self.gw.post(
            agent, f"/api/v1/conversations/{conversation_id}/messages", {"text": text}
        )
        assert status == 202, body
        await self.gw.settle()
        message: dict[str, Any] = body["message"]
        return message

    # gateway -> SMTP --------------------------------------------------------------------------
    def sent(self) -> list[EmailMessage]:
        """Every mail aiosmtpd accepted, parsed."""
        mails = []
        for envelope in self.smtp.handler.messages:
            msg = BytesParser(policy=policy.default).parsebytes(envelope.content)
            assert isinstance(msg, EmailMessage)
            mails.append(msg)
        return mails

    async def stop(self) -> None:
        """Shut the gateway down the way aiohttp does (adapters stopped, store closed)."""
        if not self.closed:
            self.closed = True
            await self.gw.client.close()


MailFactory = Callable[..., Awaitable[MailGateway]]


@pytest.fixture(params=STORE_KINDS)
async def make_mail(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
) -> AsyncIterator[MailFactory]:
    """Build gateways on each store kind, on database `db` (reuse it to restart); each is
    connected and has finished a first pass. `channel_fields` adds keys to the channel."""
    built: list[MailGateway] = []
    types = channel_types(get_plugin_manager())

    async def factory(
        db: str = "gw.db", *, channel_fields: dict[str, str] | None = None, **imap: Any
    ) -> MailGateway:
        url = store_url(request, request.param, tmp_path / db)
        text, env = mail_config(url, dovecot, smtp_server, channel_fields=channel_fields, **imap)
        config = parse_config(text, "config.yaml", config_models(types), env=env)
        clock = ManualClock()
        options = RuntimeOptions(
            retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002), run_scheduler=False
        )
        app = create_app(config, types, clock=clock, options=options)
        client = TestClient(TestServer(app))
        await client.start_server()
        mail = MailGateway(Gateway(client, app[RUNTIME], clock), dovecot, smtp_server)
        built.append(mail)
        await mail.wait_synced(lambda: mail.adapter.passes >= 1 and mail.adapter.health().ok)
        return mail

    yield factory
    for mail in built:
        await mail.stop()
