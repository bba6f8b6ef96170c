"""The Redis store when its redis-server is down or hung: `StoreUnavailable`, fast and bounded.

Each test runs its own real redis-server (the session's one is shared and must not be stopped)
and kills it (an outage: connections refused) or SIGSTOPs it (a hang: the kernel still accepts
connections and buffers commands, nothing answers). The hang tests give the store a 1 s bound
through the URL's `?socket_timeout=`, so they take about that long.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any

import pytest
import redis

from gateway.clock import ManualClock
from gateway.errors import StoreUnavailable
from gateway.ingest import Ingestor
from gateway.store.redis import RedisStore
from gateway.store.redis_batch import STORE_TIMEOUT
from tests.conftest import inbound
from tests.store.redis_server import RedisServer
from tests.store.test_contract import make_ingestor

BOUND = 1.0
"""The store's bound in the hang tests (`?socket_timeout=1`)."""
SLACK = 1.5
"""What a loaded test machine may add to a bound."""


@pytest.fixture
def server(redis_alone: RedisServer) -> RedisServer:
    """A redis-server of this test's own, which the test may kill or pause."""
    return redis_alone


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    opened = RedisStore.from_url(f"{server.url}?socket_timeout={BOUND:g}")
    await opened.open()
    yield opened
    await opened.close()


async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
    """The outcome of `call` (its result or its exception) and how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        outcome = await call
    except Exception as exc:
        outcome = exc
    return outcome, loop.time() - started


def assert_unavailable(outcome: Any) -> None:
    assert isinstance(outcome, StoreUnavailable), repr(outcome)
    assert outcome.code == "store_unavailable"
    assert outcome.__cause__ is not None  # the redis-py (or socket) error, for the log


async def test_the_bound_comes_from_the_url_or_defaults(store: RedisStore) -> None:
    assert store.timeout == BOUND
    assert store.batcher.timeout == BOUND
    assert RedisStore.from_url("redis://127.0.0.1:1/0").timeout == STORE_TIMEOUT


async def test_an_outage_is_store_unavailable_at_once(
    server: RedisServer, store: RedisStore, clock: ManualClock
) -> None:
    ingest = make_ingestor(store, clock)
    first = await ingest.message(inbound("Hola", pid="wamid.1"))
    cursor = await store.last_cursor()
    server.kill()
    calls: dict[str, Awaitable[Any]] = {
        "ingest": ingest.message(inbound("Otra", pid="wamid.2")),
        "get_conversation": store.get_conversation(first.conversation.id),
        "read_events": store.read_events(cursor),
        "wait_events": store.wait_events(cursor, 0.5),
        "claim_due": store.claim_due(clock.now(), 10, timedelta(seconds=30)),
        "kv_set": store.kv_set("k", "v"),
        "publish_ephemeral": store.publish_ephemeral(first.events[0]),
    }
    for name, call in calls.items():
        outcome, took = await timed(call)
        assert_unavailable(outcome)
        assert isinstance(outcome.__cause__, redis.ConnectionError | OSError), (name, outcome)
        assert took < SLACK, (name, took)
    assert not await store.ping()


async def test_after_an_outage_the_refused_message_is_stored_once(
    server: RedisServer, store: RedisStore, clock: ManualClock
) -> None:
    ingest = make_ingestor(store, clock)
    await ingest.message(inbound("Hola", pid="wamid.1"))
    server.kill()
    with pytest.raises(StoreUnavailable):
        await ingest.message(inbound("Otra", pid="wamid.2"))
    server.start()  # same port, same AOF: a restart (its script cache is empty)
    stored = await ingest.message(inbound("Otra", pid="wamid.2"))
    again = await ingest.message(inbound("Otra", pid="wamid.2"))
    assert not stored.duplicate and again.duplicate
    texts = [m.text for m in await store.list_recent_messages(stored.conversation.id)]
    assert texts == ["Hola", "Otra"]


async def test_a_hang_is_store_unavailable_within_the_bound(
    server: RedisServer, store: RedisStore, clock: ManualClock
) -> None:
    """Ingests of one contact queue on its lock: each is bounded in all, so none waits for the
    ones before it to time out first; a blocking read is bounded by its block time plus the
    bound; once Redis goes on, every refused message is stored exactly once."""
    ingest = make_ingestor(store, clock)
    first = await ingest.message(inbound("Hola", pid="wamid.0"))
    cursor = await store.last_cursor()
    assert await store.wait_events(cursor, 0.01) == []  # its connection is up when Redis hangs
    server.pause()
    try:
        pids = ["wamid.1", "wamid.2", "wamid.3"]
        outcomes = await asyncio.gather(
            *(timed(ingest.message(inbound(p, pid=p))) for p in pids),
            timed(store.get_conversation(first.conversation.id)),
            timed(store.wait_events(cursor, 0.5)),
        )
    finally:
        server.resume()
    for outcome, took in outcomes[:-1]:
        assert_unavailable(outcome)
        assert took < BOUND + SLACK, took
    blocked, took = outcomes[-1]
    assert_unavailable(blocked)
    assert took < 0.5 + BOUND + SLACK, took
    await _all_stored_once(ingest, store, pids, first.conversation.id)


async def _all_stored_once(
    ingest: Ingestor, store: RedisStore, pids: list[str], conversation_id: str
) -> None:
    """Retry `pids` as a provider would: a timed-out commit may have been applied, so a retry
    may be a duplicate; either way each is stored once."""
    for pid in pids:
        await ingest.message(inbound(pid, pid=pid))
    stored = [m.provider_message_id for m in await store.list_recent_messages(conversation_id)]
    assert sorted(stored) == sorted(["wamid.0", *pids])


async def test_error_replies_are_not_outages(store: RedisStore) -> None:
    """A wrong type or a failing script is a bug: redis-py's error, not StoreUnavailable."""
    await store.batcher.execute("SET", f"{store.prefix}:plain", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await store.batcher.execute("HGET", f"{store.prefix}:plain", "d")
    with pytest.raises(redis.ResponseError, match="boom"):
        await store.batcher.execute("EVAL", "return redis.error_reply('boom')", 0)


async def test_a_redis_that_refuses_writes_is_unavailable_too(
    server: RedisServer, store: RedisStore, clock: ManualClock
) -> None:
    """Out of memory (or a replica after a failover, a failing disk): Redis answers, but every
    write is refused until an operator or the failover fixes it. The caller should retry, as
    in an outage; once Redis takes writes again the message is stored once."""
    ingest = make_ingestor(store, clock)
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        assert await store.ping()
        admin.config_set("maxmemory", 1)  # noeviction, the default policy: writes fail with OOM
        outcome, _ = await timed(ingest.message(inbound("Hola", pid="wamid.oom")))
        assert_unavailable(outcome)
        assert "OOM" in str(outcome) or "memory" in str(outcome)
        # PING still answers: /readyz and gateway_store_up must not say ready meanwhile.
        assert not await store.ping()
        assert await store.problem() == "writes_failing"  # what /readyz says
        admin.config_set("maxmemory", 0)
        assert await store.ping()
        assert await store.problem() is None
        stored = await ingest.message(inbound("Hola", pid="wamid.oom"))
        again = await ingest.message(inbound("Hola", pid="wamid.oom"))
        assert not stored.duplicate and again.duplicate
    finally:
        admin.close()
