"""The store contract, run against every implementation (the `store` fixture is parametrized)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway import lifecycle
from gateway.clock import Clock, ManualClock, SystemClock
from gateway.errors import TransitionError, VersionConflict
from gateway.ids import new_id
from gateway.ingest import Ingestor
from gateway.lifecycle import AgentContext, ChannelPolicy, QueuePolicy
from gateway.model import (
    OPEN_STATES,
    Conversation,
    DeliveryState,
    DeliveryStatus,
    Direction,
    InboundMessage,
    Message,
    State,
)
from gateway.store.base import (
    GRACE_KIND,
    Store,
    agent_target,
    conversation_target,
    list_position,
)
from tests.conftest import inbound

WA = ChannelPolicy(reply_window=timedelta(hours=24))


def make_ingestor(store: Store, clock: ManualClock, queue: str = "support") -> Ingestor:
    return Ingestor(store, clock, route=lambda m: queue, policy_for=lambda c: WA)


def maria(active: int = 0, max_active: int = 5) -> AgentContext:
    return AgentContext("maria", frozenset({"support", "sales"}), max_active, active)


async def test_first_message_opens_waiting_conversation(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    result = await ingest.message(inbound("Hola"))
    assert not result.duplicate
    conv = result.conversation
    assert conv.state == State.WAITING
    assert conv.queue == "support"
    assert conv.version == 1
    assert conv.window_expires_at == inbound().sent_at + timedelta(hours=24)
    stored = await store.get_conversation(conv.id)
    assert stored == conv
    messages = await store.list_recent_messages(conv.id)
    assert [m.text for m in messages] == ["Hola"]
    assert messages[0].direction == Direction.IN


async def test_next_message_joins_open_conversation(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = await ingest.message(inbound("Hola", pid="a"))
    clock.advance(timedelta(minutes=1))
    later = inbound("Precio?", pid="b", sent_at=clock.now())
    second = await ingest.message(later)
    assert second.conversation.id == first.conversation.id
    assert second.conversation.version == 2
    assert second.conversation.preview == "Precio?"
    assert second.conversation.window_expires_at == clock.now() + timedelta(hours=24)
    assert [m.text for m in await store.list_recent_messages(first.conversation.id)] == [
        "Hola",
        "Precio?",
    ]


async def test_duplicate_provider_id_is_one_message(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = await ingest.message(inbound("Hola", pid="wamid.1"))
    again = await ingest.message(inbound("Hola", pid="wamid.1"))
    assert again.duplicate
    assert again.message.id == first.message.id
    assert len(await store.list_recent_messages(first.conversation.id)) == 1


async def test_concurrent_duplicates_store_once(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    results = await asyncio.gather(*(ingest.message(inbound("x", pid="same")) for _ in range(20)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.message.id for r in results}) == 1
    assert len(await store.list_recent_messages(results[0].conversation.id)) == 1


async def test_concurrent_first_messages_share_one_conversation(
    store: Store, clock: ManualClock
) -> None:
    ingest = make_ingestor(store, clock)
    results = await asyncio.gather(
        *(ingest.message(inbound(f"m{i}", pid=f"p{i}")) for i in range(10))
    )
    assert len({r.conversation.id for r in results}) == 1
    assert len(await store.list_recent_messages(results[0].conversation.id)) == 10


async def test_recent_messages_page_back_from_the_newest(store: Store, clock: ManualClock) -> None:
    """A long conversation is read newest first, a page at a time, each page in order."""
    ingest = make_ingestor(store, clock)
    conversation_id = ""
    for i in range(7):
        result = await ingest.message(inbound(f"m{i}", pid=f"p{i}"))
        conversation_id = result.conversation.id
    texts = [m.text for m in await store.list_recent_messages(conversation_id, limit=3)]
    assert texts == ["m4", "m5", "m6"]
    page = await store.list_recent_messages(conversation_id, limit=3)
    older = await store.list_recent_messages(conversation_id, before=page[0].id, limit=3)
    assert [m.text for m in older] == ["m1", "m2", "m3"]
    oldest = await store.list_recent_messages(conversation_id, before=older[0].id, limit=3)
    assert [m.text for m in oldest] == ["m0"]
    assert await store.list_recent_messages(conversation_id, before=oldest[0].id) == []
    everything = await store.list_recent_messages(conversation_id)
    assert [m.text for m in everything] == [f"m{i}" for i in range(7)]


async def test_closed_conversation_gets_a_new_one(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = (await ingest.message(inbound("a", pid="1"))).conversation
    accepted = lifecycle.accept(first, maria(), clock.now())
    conv, _ = await store.update_conversation(accepted, first.version)
    closed = lifecycle.close(conv, maria(), clock.now())
    await store.update_conversation(closed, conv.version)
    second = (await ingest.message(inbound("b", pid="2"))).conversation
    assert second.id != first.id
    assert second.state == State.WAITING
    assert (await store.get_conversation(first.id)).state == State.CLOSED  # type: ignore[union-attr]


async def test_waiting_is_fifo_by_queued_at(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    ids = []
    for i in range(5):
        r = await ingest.message(inbound(f"m{i}", address=f"+1000{i}", pid=f"p{i}"))
        ids.append(r.conversation.id)
        clock.advance(timedelta(minutes=10))
    waiting = await store.list_conversations(State.WAITING, queues=["support"])
    assert [c.id for c in waiting] == ids
    assert await store.list_conversations(State.WAITING, queues=["sales"]) == []
    assert await store.list_conversations(State.WAITING, queues=[]) == []


async def test_listing_over_several_queues_keeps_one_order(
    store: Store, clock: ManualClock
) -> None:
    """Waiting: oldest queued first; closed: most recently updated first; over every queue
    asked for together, cut at the limit (the SQLite store reads each queue in index order
    and merges them)."""
    queues = ["support", "sales", "vip"]
    anyone = AgentContext("maria", frozenset(queues), 5)
    waiting, closed = [], []
    for i in range(9):
        ingest = make_ingestor(store, clock, queue=queues[i % 3])
        message = inbound(f"m{i}", address=f"+2000{i}", pid=f"q{i}")
        conv = (await ingest.message(message)).conversation
        waiting.append(conv.id)
        clock.advance(timedelta(minutes=1))
    for conv_id in reversed(waiting[3:]):  # close the newer six, newest first
        conv = await store.get_conversation(conv_id)
        assert conv is not None
        conv, _ = await store.update_conversation(
            lifecycle.accept(conv, anyone, clock.now()), conv.version
        )
        await store.update_conversation(lifecycle.close(conv, anyone, clock.now()), conv.version)
        closed.insert(0, conv_id)  # closed last = updated last: listed first
        clock.advance(timedelta(minutes=1))
    listed = await store.list_conversations(State.WAITING, queues=queues)
    assert [c.id for c in listed] == waiting[:3]
    two = ["support", "sales"]
    listed = await store.list_conversations(State.CLOSED, queues=two, limit=3)
    expected = [c for c in closed if waiting.index(c) % 3 != 2][:3]
    assert [c.id for c in listed] == expected
    listed = await store.list_conversations(State.CLOSED, queues=queues, agent="maria")
    assert [c.id for c in listed] == closed


async def pages(store: Store, state: State, size: int, **options: Any) -> list[list[str]]:
    """Every page of a listing, `size` at a time, each after the last of the one before."""
    found: list[list[str]] = []
    after = None
    while True:
        page = await store.list_conversations(state, limit=size, after=after, **options)
        if not page:
            return found
        found.append([c.id for c in page])
        after = list_position(page[-1])


async def test_a_listing_is_read_page_after_page_in_the_same_order(
    store: Store, clock: ManualClock
) -> None:
    """Pages after a position (`list_position` of a page's last) add up to the whole listing,
    in its order, also where several conversations share a time (the id breaks the tie) and
    over several queues."""
    queues = ["support", "sales"]
    anyone = AgentContext("maria", frozenset(queues), 50)
    for i in range(11):
        ingest = make_ingestor(store, clock, queue=queues[i % 2])
        await ingest.message(inbound(f"m{i}", address=f"+3000{i}", pid=f"pg{i}"))
        if i % 3 == 2:  # the others share their time with a neighbour
            clock.advance(timedelta(minutes=1))
    whole = await store.list_conversations(State.WAITING, queues=queues, limit=100)
    assert len(whole) == 11
    for size in (1, 2, 4):
        read = await pages(store, State.WAITING, size, queues=queues)
        assert [i for page in read for i in page] == [c.id for c in whole]
        assert all(len(page) <= size for page in read)
    for conv in whole[:7]:  # closed in pairs at one time
        accepted, _ = await store.update_conversation(
            lifecycle.accept(conv, anyone, clock.now()), conv.version
        )
        await store.update_conversation(
            lifecycle.close(accepted, anyone, clock.now()), accepted.version
        )
        if whole.index(conv) % 2:
            clock.advance(timedelta(minutes=1))
    closed = await store.list_conversations(State.CLOSED, queues=queues, limit=100)
    assert len(closed) == 7
    for size in (1, 3):
        read = await pages(store, State.CLOSED, size, queues=queues)
        assert [i for page in read for i in page] == [c.id for c in closed]
        mine = await pages(store, State.CLOSED, size, queues=queues, agent="maria")
        assert [i for page in mine for i in page] == [c.id for c in closed]


async def test_requeue_keeps_original_position(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    early = (await ingest.message(inbound("early", address="+1", pid="1"))).conversation
    clock.advance(timedelta(minutes=10))
    late = (await ingest.message(inbound("late", address="+2", pid="2"))).conversation
    conv, _ = await store.update_conversation(
        lifecycle.accept(early, maria(), clock.now()), early.version
    )
    policy = QueuePolicy(requeue_after=timedelta(minutes=5))
    conv, _ = await store.update_conversation(
        lifecycle.set_pending(conv, "maria", clock.now(), policy), conv.version
    )
    clock.advance(timedelta(minutes=5))
    conv, _ = await store.update_conversation(
        lifecycle.requeue_due(conv, clock.now(), WA), conv.version
    )
    waiting = await store.list_conversations(State.WAITING)
    assert [c.id for c in waiting] == [early.id, late.id]
    assert waiting[0].queued_at == early.queued_at


async def test_compare_and_set_refuses_stale_version(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    await store.update_conversation(lifecycle.accept(conv, maria(), clock.now()), conv.version)
    other = AgentContext("jose", frozenset({"support"}), 5)
    with pytest.raises(VersionConflict):
        await store.update_conversation(lifecycle.accept(conv, other, clock.now()), conv.version)
    stored = await store.get_conversation(conv.id)
    assert stored is not None and stored.agent == "maria" and stored.version == 2


@pytest.mark.parametrize("batched", [False, True])
async def test_timer_bookkeeping_keeps_the_version_and_logs_nothing(
    store: Store, clock: ManualClock, batched: bool
) -> None:
    """A no-agent check moved on (agents online) changes only a timer: stored without a new
    version and with no event, so every version a reader sees has its event (events audit).
    It is still a compare-and-set, and a change decided on the copy before it still applies."""
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    logged = len(await store.read_events(None))
    later = clock.now() + timedelta(minutes=7)
    moved = lifecycle.Transition(dataclasses.replace(conv, no_agent_at=later), (), bookkeeping=True)
    if batched:
        (outcome,) = await store.update_conversations([(moved, conv.version)])
        assert not isinstance(outcome, VersionConflict)
        stored, events = outcome
    else:
        stored, events = await store.update_conversation(moved, conv.version)
    assert (stored.version, events) == (conv.version, ())
    again = await store.get_conversation(conv.id)
    assert again is not None and (again.version, again.no_agent_at) == (conv.version, later)
    assert len(await store.read_events(None)) == logged
    due = await store.claim_due(later, 10, timedelta(seconds=30))
    assert (conversation_target(conv.id), "no_agent") in [(d.target, d.kind) for d in due]
    with pytest.raises(VersionConflict):  # it is a compare-and-set all the same
        await store.update_conversation(moved, conv.version + 1)
    accepted, _ = await store.update_conversation(
        lifecycle.accept(conv, maria(), clock.now()), conv.version
    )
    assert accepted.version == conv.version + 1


async def test_accept_race_has_exactly_one_winner(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    agents = [AgentContext(f"a{i}", frozenset({"support"}), 5) for i in range(10)]

    async def try_accept(agent: AgentContext) -> bool:
        try:
            await store.update_conversation(
                lifecycle.accept(conv, agent, clock.now()), conv.version
            )
        except VersionConflict:
            return False
        return True

    outcomes = await asyncio.gather(*(try_accept(a) for a in agents))
    assert sum(outcomes) == 1


async def test_max_active_is_checked_in_the_store(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    convs = [
        (await ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}"))).conversation
        for i in range(3)
    ]
    # The caller believes the agent is idle, but the store knows better.
    results = await asyncio.gather(
        *(
            store.update_conversation(
                lifecycle.accept(c, maria(0, max_active=2), clock.now()), c.version, max_active=2
            )
            for c in convs
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, TransitionError)]
    assert len(refused) == 1 and refused[0].code == "max_active_reached"
    assert (await store.agent_loads()) == {"maria": 2}


async def test_event_log_cursor_never_repeats_or_skips(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    await asyncio.gather(
        *(ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}")) for i in range(30))
    )
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.read_events(cursor, limit=7)
        if not page:
            break
        seen.extend(e.cursor for e in page if e.cursor)
        cursor = page[-1].cursor
    everything = await store.read_events(None, limit=1000)
    assert seen == [e.cursor for e in everything]
    assert len(seen) == len(set(seen)) == 60  # created + received per message
    types = [e.type for e in everything]
    assert types.count("conversation.created") == 30
    assert types.count("message.received") == 30
    assert await store.last_cursor() == seen[-1]


async def test_only_issued_cursors_are_issued(store: Store, clock: ManualClock) -> None:
    assert not await store.cursor_issued("garbage")  # an empty log has issued no cursor at all
    ingest = make_ingestor(store, clock)
    for i in range(3):
        await ingest.message(inbound(f"m{i}", pid=f"p{i}"))
    issued = [e.cursor or "" for e in await store.read_events(None)]
    newest = await store.last_cursor()
    assert newest is not None and newest == issued[-1]
    for cursor in issued:
        assert await store.cursor_issued(cursor)
    head = newest.rstrip("0123456789")
    tail = newest[len(head) :]
    past = head + str(int(tail) + 1).zfill(len(tail))  # the next one, not issued yet
    zero = "".join("0" if c.isdigit() else c for c in issued[-1])  # "before the first event"
    huge = "".join("9" if c.isdigit() else c for c in issued[-1])
    arabic = "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in issued[0])
    never = [past, zero, huge, arabic, "-1", "9999999999999999", "0", "", " " + issued[0]]
    never += [issued[0] + "\n", "+" + issued[0][1:], issued[0][:-1], issued[0] + "0", "x"]
    for cursor in never:
        assert not await store.cursor_issued(cursor), cursor
    # A malformed cursor is refused by the reads too, rather than read as the start.
    for cursor in ["-1", "garbage"]:
        with pytest.raises(ValueError):
            await store.read_events(cursor)


async def test_wait_events_wakes_on_new_event(store: Store, clock: ManualClock) -> None:
    cursor = await store.last_cursor()
    waiter = asyncio.create_task(store.wait_events(cursor, timeout=10))
    await asyncio.sleep(0)
    await make_ingestor(store, clock).message(inbound())
    events = await asyncio.wait_for(waiter, 10)
    assert [e.type for e in events][:1] == ["conversation.created"]
    assert await store.wait_events(await store.last_cursor(), timeout=0.01) == []


async def test_event_carries_stored_version(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    stored, events = await store.update_conversation(
        lifecycle.accept(conv, maria(), clock.now()), conv.version
    )
    assert events[0].conversation == stored
    assert events[0].change == "accepted"
    log = await store.read_events(None)
    assert log[-1].conversation == stored


async def test_deadlines_follow_the_conversation(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    expires = conv.window_expires_at
    assert expires is not None
    assert await store.next_due() == expires
    assert await store.claim_due(clock.now(), 10, timedelta(seconds=30)) == []
    due = await store.claim_due(expires, 10, timedelta(seconds=30))
    assert [(d.target, d.kind) for d in due] == [(conversation_target(conv.id), "window")]
    # Leased: a second scheduler does not get it until the lease lapses.
    assert await store.claim_due(expires, 10, timedelta(seconds=30)) == []
    again = await store.claim_due(expires + timedelta(seconds=31), 10, timedelta(seconds=30))
    assert len(again) == 1
    expired = lifecycle.expire_window(conv, expires)
    await store.update_conversation(expired, conv.version)
    assert await store.next_due() is None


async def test_clear_deadline_only_removes_the_claimed_one(
    store: Store, clock: ManualClock
) -> None:
    now = clock.now()
    await store.set_deadline("agent:x", GRACE_KIND, now)
    await store.set_deadline("agent:x", GRACE_KIND, now + timedelta(seconds=5))
    await store.clear_deadline("agent:x", GRACE_KIND, now)
    assert await store.next_due() == now + timedelta(seconds=5)
    await store.clear_deadline("agent:x", GRACE_KIND)
    assert await store.next_due() is None


def outbound(conv_id: str, clock: Clock, text: str = "Hi") -> Message:
    now = clock.now()
    return Message(
        id=new_id("m"),
        conversation_id=conv_id,
        channel="wa-main",
        channel_type="whatsapp",
        provider="test",
        direction=Direction.OUT,
        kind="text",
        text=text,
        sent_at=now,
        received_at=now,
        status=DeliveryState.QUEUED,
        agent="maria",
    )


async def test_messages_are_listed_in_the_order_they_were_stored_not_by_id(
    store: Store, clock: ManualClock
) -> None:
    """Ids come from each node's clock before the write: two nodes' messages can be stored in
    the other order than their ids. Listed by id, a reader resuming after the last message it
    was pushed skipped the other (widget audit: replies lost on two nodes, in sync or not)."""
    received = await make_ingestor(store, clock).message(inbound())
    conv = received.conversation
    later = outbound(conv.id, clock, "stored first")
    stored = await store.add_outbound(
        lifecycle.agent_message(conv, later, clock.now()), conv.version, later, None
    )
    # Made on a node whose clock is behind: a smaller id, stored after.
    earlier = dataclasses.replace(outbound(conv.id, clock, "stored second"), id="m_" + "0" * 26)
    await store.add_outbound(
        lifecycle.agent_message(stored.conversation, earlier, clock.now()),
        stored.conversation.version,
        earlier,
        None,
    )
    in_order = [received.message.id, later.id, earlier.id]
    contact = ("wa-main", "+5511999990000")
    assert [m.id for m in await store.list_recent_messages(conv.id)] == in_order
    assert [m.id for m in await store.list_contact_messages(*contact)] == in_order
    assert [m.id for m in await store.list_contact_messages(*contact, after=later.id)] == [
        earlier.id
    ]
    assert await store.list_contact_messages(*contact, after=earlier.id) == []
    back = await store.list_recent_messages(conv.id, before=earlier.id, limit=1)
    assert [m.id for m in back] == [later.id]
    # Positions are this conversation's (or contact's) messages: nothing is next to another's.
    assert await store.list_contact_messages("wa-main", "+1", after=later.id) == []
    assert await store.list_recent_messages(conv.id, before="m_" + "Z" * 26) == []


async def test_outbound_idempotency_key(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    msg = outbound(conv.id, clock)
    first = await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, "key-1"
    )
    assert first.created
    retry_msg = outbound(conv.id, clock)
    retry = await store.add_outbound(
        lifecycle.agent_message(first.conversation, retry_msg, clock.now()),
        first.conversation.version,
        retry_msg,
        "key-1",
    )
    assert not retry.created
    assert retry.message.id == msg.id
    assert len(await store.list_recent_messages(conv.id)) == 2  # the inbound and one outbound


async def test_statuses_only_move_forward(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )
    sent = await store.record_send(msg.id, provider_message_id="SM1", status=None)
    assert sent.message is not None and sent.message.provider_message_id == "SM1"

    def report(state: DeliveryState, code: str | None = None) -> DeliveryStatus:
        return DeliveryStatus("wa-main", "SM1", state, clock.now(), error_code=code)

    assert (await store.apply_status(report(DeliveryState.SENT))).moved
    assert (await store.apply_status(report(DeliveryState.READ))).moved
    late = await store.apply_status(report(DeliveryState.DELIVERED))
    assert not late.moved and late.message is not None
    assert late.message.status == DeliveryState.READ
    assert not (await store.apply_status(report(DeliveryState.FAILED, "1"))).moved
    unknown = await store.apply_status(
        DeliveryStatus("wa-main", "nope", DeliveryState.READ, clock.now())
    )
    assert unknown.message is None and not unknown.moved
    stored = await store.get_message(msg.id)
    assert stored is not None and stored.status == DeliveryState.READ
    statuses = [e for e in await store.read_events(None) if e.type == "message.status"]
    assert [e.message.status for e in statuses if e.message] == ["sent", "read"]


async def test_failed_status_keeps_error(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )
    failed = DeliveryStatus("wa-main", "X", DeliveryState.FAILED, clock.now(), "131047", "window")
    result = await store.record_send(msg.id, provider_message_id="X", status=failed)
    assert result.moved and result.message is not None
    assert result.message.error_code == "131047"


async def test_presence_arms_grace_on_last_disconnect(store: Store, clock: ManualClock) -> None:
    now = clock.now()
    grace = timedelta(seconds=30)
    await store.presence_connect("maria", "c1", "n1", now)
    await store.presence_connect("maria", "c2", "n1", now)
    assert (await store.presence())["maria"].online
    assert not await store.presence_disconnect("maria", "c1", now, grace)
    assert await store.next_due() is None
    assert await store.presence_disconnect("maria", "c2", now, grace)
    state = (await store.presence())["maria"]
    assert not state.online and state.last_seen_at == now
    assert await store.next_due() == now + grace
    # Reconnecting within the grace cancels it.
    await store.presence_connect("maria", "c3", "n1", now + timedelta(seconds=10))
    assert await store.next_due() is None
    dropped = await store.presence_drop_node("n1", now + timedelta(seconds=20), grace)
    assert dropped == ["maria"]
    claimed = await store.claim_due(now + timedelta(seconds=50), 10, grace)
    assert [(d.target, d.kind) for d in claimed] == [(agent_target("maria"), GRACE_KIND)]


async def test_kv_and_compare_set(store: Store) -> None:
    assert await store.kv_get("k") is None
    await store.kv_set("k", "1")
    assert await store.kv_get("k") == "1"
    assert not await store.kv_compare_set("k", "0", "2")
    assert await store.kv_compare_set("k", "1", "2")
    assert await store.kv_compare_set("new", None, "x")
    assert await store.kv_get("k") == "2"


async def test_counts_by_state(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    for i in range(3):
        await ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}"))
    assert await store.count_by_state() == {("waiting", "support"): 3}


async def test_counts_of_one_agent_are_what_lists_them_for_that_agent(
    store: Store, clock: ManualClock
) -> None:
    """The inbox's tabs with "only mine": counted as `list_conversations(agent=)` lists."""
    ingest = make_ingestor(store, clock)
    for i in range(4):
        await ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}"))
    waiting = await store.list_conversations(State.WAITING)
    jose = AgentContext("jose", frozenset({"support"}), 5, 0)
    for conversation, who in zip(waiting, [maria(), maria(), jose], strict=False):
        await store.update_conversation(
            lifecycle.accept(conversation, who, clock.now()), conversation.version
        )
    first, _ = await store.list_conversations(State.ACTIVE, agent="maria")
    await store.update_conversation(lifecycle.close(first, maria(), clock.now()), first.version)
    # Her closed one is not counted: an agent's history grows without end.
    assert await store.count_by_state(agent="maria") == {("active", "support"): 1}
    assert await store.count_by_state(agent="jose") == {("active", "support"): 1}
    assert await store.count_by_state(agent="nobody") == {}
    assert await store.count_by_state() == {
        ("waiting", "support"): 1,
        ("active", "support"): 2,
        ("closed", "support"): 1,
    }
    for state in OPEN_STATES:
        listed = await store.list_conversations(state, agent="maria")
        counted = (await store.count_by_state(agent="maria")).get((str(state), "support"), 0)
        assert len(listed) == counted, state


async def close_waiting(store: Store, conversation: Conversation, clock: ManualClock) -> None:
    """Accept, then close: a waiting conversation leaves the queue only by being accepted."""
    accepted, _ = await store.update_conversation(
        lifecycle.accept(conversation, maria(), clock.now()), conversation.version
    )
    await store.update_conversation(
        lifecycle.close(accepted, maria(), clock.now()), accepted.version
    )


async def test_contact_messages_span_conversations(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = (await ingest.message(inbound("a", pid="1"))).conversation
    await close_waiting(store, first, clock)
    second = await ingest.message(inbound("b", pid="2"))
    everything = await store.list_contact_messages("wa-main", "+5511999990000")
    assert [m.text for m in everything] == ["a", "b"]
    after = await store.list_contact_messages("wa-main", "+5511999990000", after=everything[0].id)
    assert [m.id for m in after] == [second.message.id]


async def test_thread_refs_link_a_new_conversation(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = (await ingest.message(inbound("a", pid="<m1@x>"))).conversation
    await close_waiting(store, first, clock)
    reply = dataclasses.replace(inbound("re: a", pid="<m2@x>"), thread_refs=("<m1@x>",))
    second = (await ingest.message(reply)).conversation
    assert second.id != first.id
    assert second.previous_conversation_id == first.id


async def test_non_waking_message_leaves_state_alone(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    first = (await ingest.message(inbound("a", pid="1"))).conversation
    await close_waiting(store, first, clock)
    auto = dataclasses.replace(
        inbound("I am away", pid="2"), wakes_conversation=False, thread_refs=("1",)
    )
    result = await ingest.message(auto)
    assert result.conversation.id == first.id
    assert result.conversation.state == State.CLOSED
    assert await store.find_open_conversation("wa-main", "+5511999990000") is None
    # Without any thread, it is kept in a closed conversation of its own.
    lone = dataclasses.replace(inbound("away", address="+9", pid="3"), wakes_conversation=False)
    kept = await ingest.message(lone)
    assert kept.conversation.state == State.CLOSED


async def test_survives_reopen(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    await store.close()
    await store.open()
    assert await store.get_conversation(conv.id) == conv
    assert len(await store.read_events(None)) == 2


async def test_status_before_send_returns_is_kept(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )
    early = DeliveryStatus("wa-main", "SM9", DeliveryState.DELIVERED, clock.now())
    assert (await store.apply_status(early)).message is None
    sent = DeliveryStatus("wa-main", "SM9", DeliveryState.SENT, clock.now())
    result = await store.record_send(msg.id, provider_message_id="SM9", status=sent)
    assert result.message is not None and result.message.status == DeliveryState.DELIVERED


async def test_cursors_order_as_strings(store: Store, clock: ManualClock) -> None:
    ingest = make_ingestor(store, clock)
    for i in range(12):
        await ingest.message(inbound(f"m{i}", address=f"+{i}", pid=f"p{i}"))
    cursors = [e.cursor or "" for e in await store.read_events(None, limit=100)]
    assert cursors == sorted(cursors) and len(set(cursors)) == 24


LAPSED = timedelta(0)
"""A heartbeat that is over as it is given: on SQLite liveness goes by the node's clock (one
process), on Redis by Redis's (nodes' clocks may differ), so a test cannot move time forward
for both; a node that should lapse heartbeats with no time to live instead."""
ALIVE = timedelta(hours=1)


async def test_node_heartbeats_and_reaping(store: Store, clock: ManualClock) -> None:
    now, grace = clock.now(), timedelta(seconds=30)
    assert not await store.node_heartbeat("n1", now, ALIVE)  # new
    assert await store.node_heartbeat("n1", now, ALIVE)
    assert not await store.node_heartbeat("n2", now, ALIVE)
    await store.presence_connect("maria", "c1", "n1", now)
    await store.presence_connect("jose", "c2", "n2", now)
    await store.presence_connect("ana", "c3", "n1", now)
    await store.presence_connect("ana", "c4", "n2", now)
    assert await store.reap_nodes(now + timedelta(seconds=5), grace) == []
    assert await store.node_heartbeat("n1", now, LAPSED)  # its last beat: then silence
    reaped_at = now + timedelta(seconds=11)
    # n1 fell silent: its agents go offline unless connected elsewhere (ana is, on n2).
    assert await store.reap_nodes(reaped_at, grace) == ["maria"]
    presence = await store.presence()
    assert not presence["maria"].online and presence["maria"].last_seen_at == reaped_at
    assert presence["jose"].online and presence["ana"].online
    assert await store.next_due() == reaped_at + grace
    assert await store.reap_nodes(reaped_at, grace) == []  # idempotent
    # n1 comes back: the store tells it it was given up on, so it records its sockets again.
    assert not await store.node_heartbeat("n1", reaped_at, ALIVE)


async def test_leases_of_a_dead_node_are_released(store: Store, clock: ManualClock) -> None:
    now = clock.now()
    await store.node_heartbeat("n1", now, ALIVE)
    await store.node_heartbeat("n2", now, ALIVE)
    await store.set_deadline("agent:x", GRACE_KIND, now)
    await store.set_deadline("agent:y", GRACE_KIND, now)
    claimed = await store.claim_due(now, 1, timedelta(hours=1), node="n1")
    assert len(claimed) == 1
    other = await store.claim_due(now, 10, timedelta(hours=1))  # anonymous: lapses by time only
    assert len(other) == 1
    later = now + timedelta(seconds=6)
    assert await store.claim_due(later, 10, timedelta(seconds=30), node="n2") == []
    await store.reap_nodes(later, timedelta(seconds=30))  # n1 is alive: its lease holds
    assert await store.claim_due(later, 10, timedelta(seconds=30), node="n2") == []
    await store.node_heartbeat("n1", now, LAPSED)
    await store.reap_nodes(later, timedelta(seconds=30))
    again = await store.claim_due(later, 10, timedelta(seconds=30), node="n2")
    assert [(d.target, d.kind, d.due_at) for d in again] == [(claimed[0].target, GRACE_KIND, now)]


async def test_startup_forgets_connections_of_dead_nodes(store: Store, clock: ManualClock) -> None:
    now, grace = clock.now(), timedelta(seconds=30)
    earlier = now - timedelta(minutes=5)
    await store.node_heartbeat("old", earlier, LAPSED)
    await store.presence_connect("maria", "c1", "old", earlier)
    await store.node_heartbeat("new", now, ALIVE)
    assert await store.presence_startup("new", now, grace) == ["maria"]
    presence = await store.presence()
    assert not presence["maria"].online
    claimed = await store.claim_due(now + grace, 10, grace)
    assert [(d.target, d.kind) for d in claimed] == [(agent_target("maria"), GRACE_KIND)]


async def test_startup_leaves_an_agent_who_never_connected_alone(
    store: Store, clock: ManualClock
) -> None:
    """Maria works over REST alone (no stream ever): a restart must not set her conversation
    pending when nothing else ever would (README); without a restart nothing does either."""
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    await store.update_conversation(lifecycle.accept(conv, maria(), clock.now()), conv.version)
    grace = timedelta(seconds=30)
    await store.node_heartbeat("n1", clock.now(), timedelta(seconds=10))
    assert await store.presence_startup("n1", clock.now(), grace) == []
    due = await store.claim_due(clock.now() + grace, 10, grace)
    assert (agent_target("maria"), GRACE_KIND) not in [(d.target, d.kind) for d in due]


async def test_early_window_closed_report_is_flagged(store: Store, clock: ManualClock) -> None:
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )
    early = DeliveryStatus(
        "wa-main",
        "SM10",
        DeliveryState.FAILED,
        clock.now(),
        "131047",
        "outside window",
        closes_window=True,
    )
    await store.apply_status(early)
    result = await store.record_send(msg.id, provider_message_id="SM10", status=None)
    assert result.closes_window
    assert result.message is not None and result.message.error_code == "131047"


async def test_a_report_naming_our_message_settles_a_send_never_recorded(
    store: Store, clock: ManualClock
) -> None:
    """The gateway died before the send's answer was stored: the provider's report names
    our id, so it finds the message, records the provider id, and applies (with any report
    kept before it). One naming a message of another channel is kept as unknown; one of a
    copy already sent under another id (a retry: the customer may have it twice) finds the
    message but changes nothing."""
    ingest = make_ingestor(store, clock)
    conv = (await ingest.message(inbound())).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )

    def report(pid: str, state: DeliveryState, channel: str = "wa-main") -> DeliveryStatus:
        return DeliveryStatus(channel, pid, state, clock.now(), message_id=msg.id)

    foreign = await ingest.status(report("SMX", DeliveryState.SENT, channel="wa-other"))
    assert foreign.message is None
    sent = await ingest.status(report("SM20", DeliveryState.SENT))
    assert sent.message is not None and sent.message.id == msg.id
    stored = await store.get_message(msg.id)
    assert stored is not None
    assert (stored.provider_message_id, stored.status) == ("SM20", DeliveryState.SENT)
    # A copy that went out under another id (a retry) does not take the message over.
    other = await ingest.status(report("SM21", DeliveryState.DELIVERED))
    assert other.message is not None and other.message.id == msg.id and not other.moved
    stored = await store.get_message(msg.id)
    assert stored is not None
    assert (stored.provider_message_id, stored.status) == ("SM20", DeliveryState.SENT)


async def test_retention_goes_by_when_events_were_logged_not_by_provider_times(
    store: Store,
) -> None:
    """A delivery report carries the provider's time, which may be a day old (a late
    re-delivery) or ahead of ours: it was logged now, and retention keeps it, and every event
    logged after the cut, as long as any other. (SQLite bisected the log on those times and
    deleted whatever preceded a day-old report.)"""
    clock = SystemClock()
    ingest = Ingestor(store, clock, route=lambda m: "support", policy_for=lambda c: WA)
    conv = (await ingest.message(inbound("old", address="+42000", pid="old"))).conversation
    msg = outbound(conv.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
    )
    await store.record_send(msg.id, provider_message_id="SMlate", status=None)
    cut = datetime.now(UTC) + timedelta(milliseconds=2)
    while datetime.now(UTC) <= cut + timedelta(milliseconds=1):
        pass  # what follows is logged after `cut`
    logged_before = len(await store.read_events(None))
    for i, age in enumerate((timedelta(days=1), -timedelta(days=3))):  # late, then ahead
        await ingest.message(inbound(f"new {i}", address=f"+4300{i}", pid=f"new{i}"))
        state = (DeliveryState.DELIVERED, DeliveryState.READ)[i]
        await ingest.status(DeliveryStatus("wa-main", "SMlate", state, clock.now() - age))
    await ingest.message(inbound("newest", address="+43009", pid="newest"))
    kept = (await store.read_events(None))[logged_before:]
    assert [e.type for e in kept].count("message.status") == 2
    assert await store.prune_events(cut, 1000) == logged_before
    assert [e.cursor for e in await store.read_events(None)] == [e.cursor for e in kept]


async def test_old_events_are_pruned_and_a_reader_behind_them_resumes_at_the_oldest_kept(
    store: Store,
) -> None:
    """Retention by age, on the store's own time (Redis: the stream ids it stamped), so this
    runs on the wall clock: the events before `cut` go, the later ones stay, and a cursor among
    the pruned ones still reads on from the oldest event kept."""
    ingest = Ingestor(store, SystemClock(), route=lambda m: "support", policy_for=lambda c: WA)
    for i in range(3):
        await ingest.message(inbound(f"old {i}", address=f"+4000{i}", pid=f"old{i}"))
    old = await store.read_events(None)
    cut = datetime.now(UTC) + timedelta(milliseconds=2)
    while datetime.now(UTC) <= cut + timedelta(milliseconds=1):
        pass  # the next events must be stamped after `cut`, on a clock that only moves itself
    for i in range(2):
        await ingest.message(inbound(f"new {i}", address=f"+4100{i}", pid=f"new{i}"))
    everything = await store.read_events(None)
    kept = everything[len(old) :]
    assert not await store.events_missed(None)  # nothing pruned yet: no reader missed anything
    assert await store.prune_events(cut, 1000) == len(old)
    assert [e.cursor for e in await store.read_events(None)] == [e.cursor for e in kept]
    assert old[1].cursor is not None and await store.cursor_issued(old[1].cursor)
    after = await store.read_events(old[1].cursor)
    assert [e.cursor for e in after] == [e.cursor for e in kept]
    # Who reads from the start, or from before the last pruned event, missed events; who had
    # read up to the last pruned one (or further) missed none.
    assert await store.events_missed(None) and await store.events_missed(old[1].cursor)
    assert not await store.events_missed(old[-1].cursor)
    assert not await store.events_missed(kept[0].cursor)
    assert await store.prune_events(cut, 1000) == 0
    assert not await store.events_missed(old[-1].cursor)  # a second pass moves no mark
    # Every event gone: their cursors are still this log's, and reading after them is empty.
    assert await store.prune_events(datetime.now(UTC) + timedelta(days=1), 1000) == len(kept)
    assert await store.read_events(None) == []
    newest = kept[-1].cursor
    assert newest is not None and await store.last_cursor() == newest
    assert await store.cursor_issued(newest) and await store.cursor_issued(old[0].cursor or "")
    assert await store.read_events(newest) == []
    assert await store.events_missed(kept[0].cursor) and not await store.events_missed(newest)


async def test_routing_runs_only_for_a_message_that_opens_a_conversation(
    store: Store, clock: ManualClock
) -> None:
    """Routing costs rules x text length on every message it runs for: a follow-up joins its
    open conversation wherever that is, so it is not routed at all."""
    routed: list[str] = []

    def route(message: InboundMessage) -> str:
        routed.append(message.provider_message_id)
        return "support"

    ingest = Ingestor(store, clock, route=route, policy_for=lambda c: WA)
    first = await ingest.message(inbound("Hola", pid="r1"))
    again = await ingest.message(inbound("¿Hay alguien?", pid="r2"))
    assert again.conversation.id == first.conversation.id
    assert routed == ["r1"]
