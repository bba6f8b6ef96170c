"""Fixtures for the email channel: real Dovecot, real aiosmtpd, a recording inbound sink."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog
from aiosmtpd.controller import Controller

from gateway.channels import ChannelContext
from gateway.clock import ManualClock
from gateway.model import DeliveryStatus, InboundMessage
from plugins.email.adapter import EmailAdapter
from plugins.email.backoff import Backoff
from plugins.email.config import EmailConfig
from tests.email.servers import (
    DOVECOT,
    DOVECOT_LDA,
    Dovecot,
    LdaHandler,
    Mta,
    RecordingHandler,
    SmtpServer,
    free_port,
    make_dovecot_root,
    remove_root,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "email"
ADDRESS = "support@gw.example.com"


class RecordingInbound:
    """The gateway's ingest as an adapter sees it: dedup on (channel, provider id), in memory."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.statuses: list[DeliveryStatus] = []
        self.duplicates = 0
        self._seen: set[tuple[str, str]] = set()

    async def message(self, inbound: InboundMessage) -> Any:
        key = (inbound.channel, inbound.provider_message_id)
        if key in self._seen:
            self.duplicates += 1
            return SimpleNamespace(duplicate=True)
        self._seen.add(key)
        self.messages.append(inbound)
        return SimpleNamespace(duplicate=False)

    async def status(self, status: DeliveryStatus) -> Any:
        self.statuses.append(status)
        return None


class MemoryKV:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def kv_get(self, key: str) -> str | None:
        return self.data.get(key)

    async def kv_set(self, key: str, value: str) -> None:
        self.data[key] = value

    async def kv_compare_set(self, key: str, expected: str | None, value: str) -> bool:
        if self.data.get(key) != expected:
            return False
        self.data[key] = value
        return True


def require_dovecot() -> None:
    """Fail (never skip) when Debian's Dovecot is not installed: these tests need it."""
    if not os.path.exists(DOVECOT):
        pytest.fail(f"{DOVECOT} is missing: install it: apt-get install -y dovecot-imapd")


def require_dovecot_lda() -> None:
    """dovecot-lda ships with Dovecot (dovecot-core, a dependency of dovecot-imapd)."""
    if not os.path.exists(DOVECOT_LDA):
        pytest.fail(f"{DOVECOT_LDA} is missing: install it: apt-get install -y dovecot-imapd")


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    require_dovecot()
    root = make_dovecot_root()
    server = Dovecot(root=root)
    server.write_config()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        remove_root(root)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer(handler=handler, controller=controller)
    finally:
        controller.stop()


@pytest.fixture
def mta(dovecot: Dovecot) -> Iterator[Mta]:
    """An SMTP server on a free port that really delivers into `dovecot` (dovecot-lda)."""
    require_dovecot_lda()
    handler = LdaHandler(dovecot)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield Mta(handler=handler, controller=controller)
    finally:
        controller.stop()


@pytest.fixture
def inbound() -> RecordingInbound:
    return RecordingInbound()


@pytest.fixture
def kv() -> MemoryKV:
    return MemoryKV()


@pytest.fixture
def mail_clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def email_config(
    imap: dict[str, Any], smtp: dict[str, Any] | None = None, **fields: Any
) -> EmailConfig:
    data: dict[str, Any] = {
        "name": "support-mail",
        "type": "email",
        "address": ADDRESS,
        "imap": imap,
        "smtp": smtp or {"host": "127.0.0.1", "port": 25, "tls": "none"},
    }
    data.update(fields)
    return EmailConfig.model_validate(data)


def channel_context(
    config: EmailConfig,
    inbound: RecordingInbound,
    kv: MemoryKV,
    clock: ManualClock,
    http: aiohttp.ClientSession | None = None,
) -> ChannelContext:
    """Build a ChannelContext with whatever fields the core's current version declares."""
    values: dict[str, Any] = {
        "config": config,
        "public_url": "http://127.0.0.1:8080",
        "inbound": inbound,
        "kv": kv,
        "clock": clock,
        "log": structlog.get_logger("tests.email"),
        "http": http,
        "http_provider": lambda: http,
    }
    kwargs = {}
    for item in dataclasses.fields(ChannelContext):
        if item.name in values:
            kwargs[item.name] = values[item.name]
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            kwargs[item.name] = None  # history/event feeds: unused by the email channel
    return ChannelContext(**kwargs)


@pytest.fixture
async def make_adapter(
    inbound: RecordingInbound, kv: MemoryKV, mail_clock: ManualClock
) -> AsyncIterator[Any]:
    """Build adapters (fast reconnect backoff); every one built is stopped at teardown."""
    built: list[EmailAdapter] = []

    def build(
        config: EmailConfig,
        *,
        kv_store: MemoryKV | None = None,
        http: aiohttp.ClientSession | None = None,
        imap_tls_context: ssl.SSLContext | None = None,
        smtp_tls_context: ssl.SSLContext | None = None,
    ) -> EmailAdapter:
        context = channel_context(config, inbound, kv_store or kv, mail_clock, http)
        adapter = EmailAdapter(
            context,
            backoff=Backoff(initial=0.05, cap=0.5),
            imap_tls_context=imap_tls_context,
            smtp_tls_context=smtp_tls_context,
        )
        built.append(adapter)
        return adapter

    yield build
    for adapter in built:
        await asyncio.wait_for(adapter.stop(), 10)


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.eml"))
