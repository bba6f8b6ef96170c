"""What only the Redis store has: cursors from stream ids, pipelining, several stores at once.

The shared behaviour is in `test_contract.py`; these tests cover the parts that exist because
Redis is shared by several processes and talked to through a batching client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import gateway.store.redis
from gateway import lifecycle
from gateway.clock import ManualClock
from gateway.errors import VersionConflict
from gateway.ingest import Ingestor
from gateway.lifecycle import AgentContext, ChannelPolicy
from gateway.model import State
from gateway.store.redis import RedisStore, cursor_of, stream_id_of
from gateway.store.redis_batch import CommandBatcher, Script
from tests.conftest import inbound
from tests.store.redis_server import RedisServer

DB = 3  # not the `store` fixture's database, which it flushes


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one Redis: what two gateway processes see."""
    redis_server.flush(DB)
    a, b = (
        RedisStore.from_url(redis_server.url_for(DB)),
        RedisStore.from_url(redis_server.url_for(DB)),
    )
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


@given(
    st.integers(0, 10**15 - 1),
    st.integers(0, 10**10 - 1),
    st.integers(0, 10**15 - 1),
    st.integers(0, 10**10 - 1),
)
def test_cursors_sort_like_stream_ids(ms1: int, seq1: int, ms2: int, seq2: int) -> None:
    c1, c2 = cursor_of(f"{ms1}-{seq1}"), cursor_of(f"{ms2}-{seq2}")
    assert (c1 < c2) == ((ms1, seq1) < (ms2, seq2))
    assert stream_id_of(c1) == f"{ms1}-{seq1}"


def test_foreign_cursor_is_refused() -> None:
    with pytest.raises(ValueError):
        stream_id_of("0000000000000042")  # a SQLite cursor
    assert stream_id_of(None) == "0-0"


def test_url_prefix_option() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/2?prefix=tenant7&socket_timeout=3")
    assert store.prefix == "tenant7"
    assert store.url == "redis://127.0.0.1:1/2?socket_timeout=3"


async def test_concurrent_calls_share_pipelines_and_keep_their_own_errors(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url_for(DB), protocol=2)
    echo = Script("echo", "return ARGV[1]")
    boom = Script("boom", "return redis.error_reply('boom ' .. ARGV[1])")
    batcher = CommandBatcher(client, [echo, boom], max_in_flight=1)
    try:
        await batcher.load_scripts()
        calls = [batcher.evalsha(boom if i % 10 == 3 else echo, (), (str(i),)) for i in range(200)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 10 == 3:
                assert isinstance(result, redis.ResponseError) and f"boom {i}" in str(result)
            else:
                assert result == str(i).encode()
        # 200 calls issued in one tick went out in one pipeline (max_in_flight=1).
        assert batcher.pipelines_sent == 1 and batcher.commands_sent == 200
    finally:
        await client.aclose()


async def test_scripts_are_reloaded_when_redis_forgot_them(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    a, _ = stores
    ingest = Ingestor(a, clock, lambda m: "support", lambda c: ChannelPolicy())
    await ingest.message(inbound("one", pid="1"))
    client = redis.asyncio.Redis.from_url(a.url)
    await client.script_flush()  # what a Redis restart does to the script cache
    await client.aclose()
    second = await ingest.message(inbound("two", pid="2"))
    assert [m.text for m in await a.list_recent_messages(second.conversation.id)] == ["one", "two"]


async def test_two_nodes_ingesting_one_contact_share_one_conversation(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    """Conflicts between nodes are resolved by re-planning, never by a second conversation."""
    a, b = stores
    ingest_a = Ingestor(a, clock, lambda m: "support", lambda c: ChannelPolicy())
    ingest_b = Ingestor(b, clock, lambda m: "support", lambda c: ChannelPolicy())
    results = await asyncio.gather(
        *(
            (ingest_a if i % 2 else ingest_b).message(inbound(f"m{i}", pid=f"p{i}"))
            for i in range(12)
        )
    )
    assert len({r.conversation.id for r in results}) == 1
    assert len(await a.list_recent_messages(results[0].conversation.id)) == 12
    stored = await a.get_conversation(results[0].conversation.id)
    assert stored is not None and stored.version == 12
    assert len(await b.read_events(None)) == 1 + 12 + 11  # created, received x12, updated x11


async def test_accept_race_across_nodes(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    a, b = stores
    conv = (
        await Ingestor(a, clock, lambda m: "support", lambda c: ChannelPolicy()).message(inbound())
    ).conversation

    async def accept(store: RedisStore, agent: str) -> bool:
        context = AgentContext(agent, frozenset({"support"}), 5)
        try:
            await store.update_conversation(
                lifecycle.accept(conv, context, clock.now()), conv.version
            )
        except VersionConflict:
            return False
        return True

    wins = await asyncio.gather(*(accept(a if i % 2 else b, f"agent{i}") for i in range(20)))
    assert sum(wins) == 1
    assert await a.agent_loads() == {f"agent{wins.index(True)}": 1}


async def test_startup_keeps_connections_of_live_nodes(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    a, b = stores
    now, ttl, grace = clock.now(), timedelta(seconds=10), timedelta(seconds=30)
    await a.node_heartbeat("node-a", now, ttl)
    await a.presence_connect("maria", "c1", "node-a", now)
    await b.node_heartbeat("node-b", now, ttl)
    assert await b.presence_startup("node-b", now, grace) == []
    assert (await b.presence())["maria"].online


async def test_wait_events_sees_other_nodes_writes(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    a, b = stores
    cursor = await b.last_cursor()
    # The cursor makes the order irrelevant: whether the write lands before or during the
    # blocking read, the waiter gets it.
    waiter = asyncio.create_task(b.wait_events(cursor, timeout=10))
    await Ingestor(a, clock, lambda m: "support", lambda c: ChannelPolicy()).message(inbound())
    events = await asyncio.wait_for(waiter, 10)
    assert events[0].type == "conversation.created"
    assert (await b.list_conversations(State.WAITING))[0].id == events[0].conversation.id  # type: ignore[union-attr]


async def test_repeat_contact_ingests_in_one_round_trip_and_survives_stale_knowledge(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    """A node plans a known contact's message on what it last saw (one script call); when
    another node moved the conversation on meanwhile, the commit refuses and hands back the
    fresh state, and the message still lands once in the right conversation."""
    a, b = stores
    ingest_a = Ingestor(a, clock, lambda m: "support", lambda c: ChannelPolicy())
    ingest_b = Ingestor(b, clock, lambda m: "support", lambda c: ChannelPolicy())
    first = await ingest_a.message(inbound("1", pid="1"))
    before = a.batcher.commands_sent
    await ingest_a.message(inbound("2", pid="2"))
    assert a.batcher.commands_sent - before == 1
    await ingest_b.message(inbound("3", pid="3"))  # a's knowledge is now one version behind
    fourth = await ingest_a.message(inbound("4", pid="4"))
    assert fourth.conversation.id == first.conversation.id and fourth.conversation.version == 4
    # b closes it; a still believes it open, yet the next message opens a new conversation.
    accepted, _ = await b.update_conversation(
        lifecycle.accept(fourth.conversation, maria(), clock.now()), fourth.conversation.version
    )
    await b.update_conversation(lifecycle.close(accepted, maria(), clock.now()), accepted.version)
    fifth = await ingest_a.message(inbound("5", pid="5"))
    assert fifth.conversation.id != first.conversation.id
    assert fifth.conversation.state == State.WAITING
    texts = [m.text for m in await b.list_contact_messages("wa-main", "+5511999990000")]
    assert texts == ["1", "2", "3", "4", "5"]
    again = await ingest_b.message(inbound("5", pid="5"))
    assert again.duplicate and again.message.id == fifth.message.id


async def test_a_lapsed_window_expired_by_another_node_does_not_wedge_this_ones_knowledge(
    stores: tuple[RedisStore, RedisStore], clock: ManualClock
) -> None:
    """Node a last saw the contact's conversation open; node b's timer then expired its
    window. a's next message from the contact, planned on what a remembers, finds the window
    lapsed: a must read the conversation afresh (inactive now) and open a new one. It used to
    keep planning on its stale copy and refuse the contact's every message (500) until the
    process restarted (an audit on three nodes)."""
    a, b = stores
    wa = ChannelPolicy(reply_window=timedelta(hours=24))
    ingest_a = Ingestor(a, clock, lambda m: "support", lambda c: wa)
    first = (await ingest_a.message(inbound("Hola", pid="w1", sent_at=clock.now()))).conversation
    assert first.window_expires_at is not None
    clock.set(first.window_expires_at + timedelta(seconds=1))
    expired, _ = await b.update_conversation(lifecycle.expire_window(first, clock.now()), 1)
    assert expired.state == State.INACTIVE  # b's timer ran; a has not heard of it
    result = await ingest_a.message(inbound("¿hola?", pid="w2", sent_at=clock.now()))
    assert result.conversation.id != first.id
    assert result.conversation.state == State.WAITING
    again = await ingest_a.message(inbound("¿sigue?", pid="w3", sent_at=clock.now()))
    assert again.conversation.id == result.conversation.id


def maria() -> AgentContext:
    return AgentContext("maria", frozenset({"support"}), 5)


async def test_contact_lock_is_fifo_and_survives_cancelled_waiters() -> None:
    from gateway.keylocks import KeyedLocks

    locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
    key = ("wa-main", "+1")
    order: list[str] = []
    await locks.acquire(key)

    async def take(name: str) -> None:
        await locks.acquire(key)
        order.append(name)
        locks.release(key)

    first = asyncio.create_task(take("first"))
    doomed = asyncio.create_task(take("doomed"))
    last = asyncio.create_task(take("last"))
    await asyncio.sleep(0)  # let the three queue up behind the holder
    doomed.cancel()
    locks.release(key)
    await asyncio.gather(first, last)
    assert doomed.cancelled() and order == ["first", "last"]
    await locks.acquire(key)  # nobody holds it any more
    locks.release(key)
    assert not locks._waiters


def test_store_encoding_is_the_shared_codec_byte_for_byte(clock: ManualClock) -> None:
    """The Redis store writes JSON with orjson's own datetime encoder (much faster); it must
    stay exactly what `gateway.codec.encode` writes, so both stores share one format."""
    import dataclasses

    from gateway.codec import encode
    from gateway.ingest import to_message
    from gateway.model import Event
    from gateway.store.redis import _dumps

    policy = ChannelPolicy(reply_window=timedelta(hours=24), no_agent_timeout=timedelta(minutes=5))
    now = clock.now() + timedelta(microseconds=123456)
    conversation = lifecycle.open_conversation("c_1", inbound(), "q", now, policy).conversation
    message = dataclasses.replace(
        to_message(inbound(), "m_1", conversation), raw={"a": [1, {"b": None}]}
    )
    event = Event("message.received", now, conversation, message, change=None)
    for value in (conversation, message, event):
        assert _dumps(value) == encode(value)


async def test_retention_measures_age_on_redis_clock_not_the_nodes(
    stores: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock ran two hours ahead, with an hour's retention, trimmed the whole
    shared log: its cut-off was an hour in Redis's future. The age is Redis's to measure."""
    a, b = stores
    clock = ManualClock(datetime.now(UTC))
    ingest = Ingestor(a, clock, route=lambda m: "support", policy_for=lambda c: ChannelPolicy())
    await ingest.message(inbound("minutes old", pid="skew1"))
    logged = len(await a.read_events(None))
    ahead = time.time() + 2 * 3600
    monkeypatch.setattr(gateway.store.redis.time, "time", lambda: ahead)
    node_now = datetime.fromtimestamp(ahead, UTC)
    assert await b.prune_events(node_now - timedelta(hours=1), 1000) == 0
    assert len(await a.read_events(None)) == logged
    # Everything appended before now (an age of zero on any clock) goes.
    assert await b.prune_events(node_now + timedelta(seconds=1), 1000) == logged


async def test_messages_stored_before_the_stored_order_existed_still_come_first_by_id(
    stores: tuple[RedisStore, RedisStore], redis_server: RedisServer
) -> None:
    """A database written before messages were kept in stored order has them all at score 0;
    they stay first, among themselves by id, and what is stored since follows them."""
    a, _ = stores
    clock = ManualClock(datetime.now(UTC))
    ingest = Ingestor(a, clock, route=lambda m: "support", policy_for=lambda c: ChannelPolicy())
    first = await ingest.message(inbound("old one", pid="legacy-1"))
    second = await ingest.message(inbound("old two", pid="legacy-2"))
    conversation_id = first.conversation.id
    keys = (a._c(conversation_id) + ":msgs", a._ch("wa-main", "contact:+5511999990000"))
    raw = redis.asyncio.Redis.from_url(redis_server.url_for(DB))
    try:
        for key in keys:  # as the older gateway stored them
            await raw.zadd(key, {first.message.id: 0, second.message.id: 0})
    finally:
        await raw.aclose()
    third = await ingest.message(inbound("new", pid="after-upgrade"))
    ids = [first.message.id, second.message.id, third.message.id]
    assert [m.id for m in await a.list_recent_messages(conversation_id)] == ids
    contact = ("wa-main", "+5511999990000")
    assert [m.id for m in await a.list_contact_messages(*contact, after=ids[0])] == ids[1:]
    before = await a.list_recent_messages(conversation_id, before=ids[2], limit=1)
    assert [m.id for m in before] == ids[1:2]


async def test_a_node_whose_clock_is_behind_is_not_reaped_by_the_others(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    """Widget re-audit: a node 10 s behind stamped "alive until" on its own clock, the others
    compared it with theirs and reaped it every few seconds: its agents flapped offline. A
    heartbeat now lasts its time to live on Redis's clock, whatever the nodes' say."""
    behind, ahead = stores
    real = datetime.now(UTC)
    grace = timedelta(seconds=30)
    await behind.node_heartbeat("slow", real - timedelta(seconds=10), timedelta(seconds=10))
    await behind.presence_connect("maria", "c1", "slow", real - timedelta(seconds=10))
    await ahead.node_heartbeat("fast", real + timedelta(seconds=10), timedelta(seconds=10))
    assert await ahead.reap_nodes(real + timedelta(seconds=10), grace) == []
    assert await ahead.presence_startup("fast", real + timedelta(seconds=10), grace) == []
    assert (await ahead.presence())["maria"].online
    assert await behind.node_heartbeat("slow", real - timedelta(seconds=10), timedelta(seconds=10))


async def test_a_node_of_an_older_version_on_the_same_redis_is_named_in_the_log(
    stores: tuple[RedisStore, RedisStore], redis_server: RedisServer
) -> None:
    """Upgrade audit: during a rolling upgrade, messages the old nodes stored sorted before
    everything the new ones had stored, for good, and nothing said so. A node now records its
    data layout with each heartbeat and names the live nodes that record none."""
    a, b = stores
    now, ttl = datetime.now(UTC), timedelta(seconds=30)
    with capture_logs() as logs:
        await a.node_heartbeat("new-a", now, ttl)
        await b.node_heartbeat("new-b", now, ttl)
    assert not [e for e in logs if e["event"] == "store.mixed_versions"]
    raw = redis.asyncio.Redis.from_url(redis_server.url_for(DB))
    try:  # what an older node's heartbeat writes: its expiry, no layout
        await raw.zadd("gw:{g}:nodes", {"old-c": int((time.time() + 60) * 1e6)})
    finally:
        await raw.aclose()
    with capture_logs() as logs:
        await a.node_heartbeat("new-a", now, ttl)
        await a.node_heartbeat("new-a", now, ttl)  # said once, not at every beat
    (mixed,) = [e for e in logs if e["event"] == "store.mixed_versions"]
    assert mixed["nodes"] == ["old-c"] and mixed["log_level"] == "warning"
