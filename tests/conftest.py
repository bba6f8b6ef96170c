"""Shared fixtures: real stores on real files/servers, an injectable clock, sample messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.model import Contact, InboundMessage
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore
from tests.store.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"

STORE_KINDS = ["sqlite", "redis"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (AOF, appendfsync always); fails if not installed.

    Database 0 belongs to the `store` fixture, which flushes it before each test; other tests
    use other database numbers so that flush never pulls state from under them.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind = request.param
    s: Store
    if kind == "sqlite":
        s = SqliteStore(tmp_path / "gateway.db")
    elif kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush(0)
        s = RedisStore.from_url(server.url_for(0))
    else:  # pragma: no cover - a kind without a fixture is a bug here
        raise AssertionError(kind)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def inbound(
    text: str = "Hola",
    *,
    channel: str = "wa-main",
    address: str = "+5511999990000",
    pid: str | None = None,
    sent_at: datetime | None = None,
    channel_type: str = "whatsapp",
    name: str | None = "Ana",
) -> InboundMessage:
    """A normalized customer message, as an adapter would hand it to ingest."""
    return InboundMessage(
        channel=channel,
        channel_type=channel_type,
        provider="test",
        provider_message_id=pid or f"pm-{text}-{address}",
        contact=Contact(address=address, display_name=name),
        sent_at=sent_at or datetime(2026, 11, 25, 7, 0, tzinfo=UTC),
        text=text,
    )
