"""The deadline scheduler: fires due deadlines once, survives restarts, races safely."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.directory import AgentInfo, Directory, QueueInfo
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy
from gateway.model import State
from gateway.store.base import GRACE_KIND, agent_target
from gateway.store.sqlite import SqliteStore
from gateway.timers import DeadlineHandler, Scheduler
from tests.conftest import inbound

WA = ChannelPolicy(reply_window=timedelta(hours=24))
DIRECTORY = Directory(
    channels={"wa-main": WA},
    queues={"support": QueueInfo("support", requeue_after=timedelta(minutes=10))},
    agents={"maria": AgentInfo("maria", frozenset({"support"}), 5)},
)


def scheduler(store: SqliteStore, clock: ManualClock, *, batched: bool = True) -> Scheduler:
    """The scheduler as the runtime builds it (batched), or the one-by-one path alone."""
    handler = DeadlineHandler(store, clock, DIRECTORY)
    return Scheduler(store, clock, handler, batch_handler=handler.batch if batched else None)


async def test_window_expiry_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "gw.db"
    store = SqliteStore(db)
    await store.open()
    ingest = Ingestor(store, clock, lambda m: "support", DIRECTORY.policy)
    conv = (await ingest.message(inbound())).conversation
    await store.close()  # the process goes away; nothing lives in memory

    clock.advance(timedelta(hours=24))
    restarted = SqliteStore(db)
    await restarted.open()
    try:
        assert await scheduler(restarted, clock).run_once() == 1
        stored = await restarted.get_conversation(conv.id)
        assert stored is not None and stored.state == State.INACTIVE
        assert stored.inactive_reason == "window_expired"
        assert await restarted.next_due() is None
    finally:
        await restarted.close()


@pytest.mark.parametrize("batched", [True, False])
async def test_racing_schedulers_fire_each_deadline_once(
    batched: bool, tmp_path: Path, clock: ManualClock
) -> None:
    db = tmp_path / "gw.db"
    a, b = SqliteStore(db), SqliteStore(db)
    await a.open()
    await b.open()
    try:
        ingest = Ingestor(a, clock, lambda m: "support", DIRECTORY.policy)
        for i in range(50):
            await ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}"))
        clock.advance(timedelta(hours=25))
        fired = await asyncio.gather(
            scheduler(a, clock, batched=batched).run_once(),
            scheduler(b, clock, batched=batched).run_once(),
        )
        assert sum(fired) == 50  # leases split the work; nobody fires one twice
        inactive = await a.list_conversations(State.INACTIVE, limit=100)
        assert len(inactive) == 50
        changes = [e for e in await a.read_events(None, limit=1000) if e.change == "inactive"]
        assert len(changes) == 50
    finally:
        await a.close()
        await b.close()


async def test_stale_deadline_is_dropped(store: SqliteStore, clock: ManualClock) -> None:
    ingest = Ingestor(store, clock, lambda m: "support", DIRECTORY.policy)
    conv = (await ingest.message(inbound())).conversation
    # The customer writes again an hour later: the old deadline is replaced, not fired.
    clock.advance(timedelta(hours=1))
    await ingest.message(inbound("again", pid="p2", sent_at=clock.now()))
    clock.advance(timedelta(hours=23, minutes=30))
    assert await scheduler(store, clock).run_once() == 0
    stored = await store.get_conversation(conv.id)
    assert stored is not None and stored.state == State.WAITING
    clock.advance(timedelta(minutes=30))
    assert await scheduler(store, clock).run_once() == 1


async def test_requeue_after_puts_pending_back_in_order(
    store: SqliteStore, clock: ManualClock
) -> None:
    from gateway import lifecycle

    ingest = Ingestor(store, clock, lambda m: "support", DIRECTORY.policy)
    first = (await ingest.message(inbound("a", address="+1", pid="1"))).conversation
    clock.advance(timedelta(minutes=1))
    second = (await ingest.message(inbound("b", address="+2", pid="2"))).conversation
    agent = DIRECTORY.agents["maria"].context(0)
    conv, _ = await store.update_conversation(
        lifecycle.accept(first, agent, clock.now()), first.version
    )
    await store.update_conversation(
        lifecycle.set_pending(conv, "maria", clock.now(), DIRECTORY.queue_policy("support")),
        conv.version,
    )
    clock.advance(timedelta(minutes=10))
    assert await scheduler(store, clock).run_once() == 1
    waiting = await store.list_conversations(State.WAITING)
    assert [c.id for c in waiting] == [first.id, second.id]


async def test_run_forever_wakes_for_due_deadlines(store: SqliteStore, clock: ManualClock) -> None:
    ingest = Ingestor(store, clock, lambda m: "support", DIRECTORY.policy)
    conv = (await ingest.message(inbound())).conversation
    fired = asyncio.Event()
    handler = DeadlineHandler(store, clock, DIRECTORY)

    async def observed(deadline):  # type: ignore[no-untyped-def]
        await handler(deadline)
        fired.set()

    loop = Scheduler(store, clock, observed, poll_interval=0.01)
    task = asyncio.create_task(loop.run_forever())
    clock.advance(timedelta(hours=24))
    loop.poke()
    await asyncio.wait_for(fired.wait(), 5)
    loop.stop()
    await task
    stored = await store.get_conversation(conv.id)
    assert stored is not None and stored.state == State.INACTIVE


async def test_a_grace_armed_by_a_node_with_a_shorter_one_is_moved_not_dropped(
    store: SqliteStore, clock: ManualClock
) -> None:
    """During a rolling config change one node still has a 30 s grace while another already
    has 2 s. The 2 s node arms the deadline; when the 30 s node fires it, its own grace has
    not ended: it moves the deadline to its end. Dropping it would leave the agent's
    conversations active with nobody there, for good."""
    from gateway import lifecycle

    ingest = Ingestor(store, clock, lambda m: "support", DIRECTORY.policy)
    waiting = (await ingest.message(inbound())).conversation
    agent = DIRECTORY.agents["maria"].context(0)
    active, _ = await store.update_conversation(
        lifecycle.accept(waiting, agent, clock.now()), waiting.version
    )
    gone_at = clock.now()
    await store.presence_connect("maria", "ws-1", "node-short", gone_at)
    assert await store.presence_disconnect("maria", "ws-1", gone_at, timedelta(seconds=2))
    assert DIRECTORY.agent_disconnect_grace == timedelta(seconds=30)  # the firing node's

    clock.advance(timedelta(seconds=2))
    assert await scheduler(store, clock).run_once() == 1
    still = await store.get_conversation(active.id)
    assert still is not None and still.state == State.ACTIVE
    assert await store.next_due() == gone_at + timedelta(seconds=30)

    clock.advance(timedelta(seconds=28))
    assert await scheduler(store, clock).run_once() == 1
    pending = await store.get_conversation(active.id)
    assert pending is not None and pending.state == State.PENDING
    left = await store.claim_due(clock.now() + timedelta(days=1), 10, timedelta(seconds=1))
    assert GRACE_KIND not in {d.kind for d in left}  # only the conversation's own are left


async def test_a_grace_for_an_agent_who_came_back_is_dropped(
    store: SqliteStore, clock: ManualClock
) -> None:
    now = clock.now()
    await store.presence_connect("maria", "ws-1", "n", now)
    await store.presence_disconnect("maria", "ws-1", now, timedelta(seconds=30))
    await store.presence_connect("maria", "ws-2", "n", now + timedelta(seconds=5))
    # A deadline left armed (as if set again by a node that had not seen the reconnect).
    await store.set_deadline(agent_target("maria"), GRACE_KIND, now + timedelta(seconds=30))
    clock.advance(timedelta(seconds=30))
    assert await scheduler(store, clock).run_once() == 1
    assert await store.next_due() is None
