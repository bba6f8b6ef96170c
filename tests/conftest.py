"""Shared fixtures: real stores on real files/servers, an injectable clock, sample messages."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio

from gateway.clock import ManualClock
from gateway.model import Contact, InboundMessage
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore
from tests.store.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"

STORE_KINDS = ["sqlite", "redis"]

GATEWAY_REDIS_DB = 3
"""The Redis database of the gateways test factories build (tests/api, the e2e suites). No test
relies on a flush of it: each gateway's keys carry a prefix of its own (see `store_url`)."""


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open SQLite store of the test's own, for what only that store does."""
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    yield store
    await store.close()


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


def store_url(request: pytest.FixtureRequest, kind: str, path: Path) -> str:
    """The `store.url` of a gateway a test builds on store `kind`: the SQLite file `path`, or
    the session's Redis with a key prefix derived from `path`, so a test's gateways are apart
    from every other test's without a flush, and a restart on the same `path` finds its data."""
    if kind == "sqlite":
        return f"sqlite:///{path}"
    if kind != "redis":  # pragma: no cover - a kind without a url is a bug here
        raise AssertionError(kind)
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = "t" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return f"{server.url_for(GATEWAY_REDIS_DB)}?prefix={prefix}"


RECORD_KINDS = ("conversations", "messages", "events", "orphan_statuses", "deadlines")


async def record_counts(store: Store) -> dict[str, int]:
    """How many of each of `RECORD_KINDS` `store` holds, asked each backend in its own way on a
    connection of the test's own: SQLite rows per table; Redis records by their keys (layout:
    docs/redis.md), the log's length, orphan reports per list, the deadlines' sorted set."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        try:
            return {
                kind: conn.execute(f"SELECT COUNT(*) FROM {kind}").fetchone()[0]
                for kind in RECORD_KINDS
            }
        finally:
            conn.close()
    assert isinstance(store, RedisStore), store
    prefix = re.sub(r"([\\*?\[\]])", r"\\\1", store.prefix)  # glob-escaped
    client = redis.asyncio.Redis.from_url(store.url, protocol=2)
    try:

        async def keys(pattern: str) -> list[bytes]:
            return [key async for key in client.scan_iter(match=pattern, count=10_000)]

        orphans = 0
        for key in await keys(f"{prefix}:{{ch:*}}:orphan:*"):
            orphans += await client.llen(key)
        return {
            "conversations": len(await keys(f"{prefix}:{{c:*}}")),
            "messages": len(await keys(f"{prefix}:{{m:*}}")),
            "events": await client.xlen(f"{store.prefix}:{{g}}:log"),
            "orphan_statuses": orphans,
            "deadlines": await client.zcard(f"{store.prefix}:{{g}}:due"),
        }
    finally:
        await client.aclose()


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


@pytest.fixture
def redis_alone(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF, appendfsync always), so it can be killed,
    paused or restarted (the session's shared one must not be)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
