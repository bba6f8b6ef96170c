"""The pure state machine: each rule, then hypothesis over random sequences of events."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import lifecycle
from gateway.errors import TransitionError
from gateway.lifecycle import (
    ALLOWED_EDGES,
    AgentContext,
    ChannelPolicy,
    QueuePolicy,
    QueuePresence,
    Transition,
)
from gateway.model import Conversation, State
from tests.conftest import inbound

T0 = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
WA = ChannelPolicy(reply_window=timedelta(hours=24))
WEB = ChannelPolicy(no_agent_timeout=timedelta(minutes=5))
MARIA = AgentContext("maria", frozenset({"support"}), 2)
JOSE = AgentContext("jose", frozenset({"support", "sales"}), 2)
NO_REQUEUE = QueuePolicy()


def opened(policy: ChannelPolicy = WA, at: datetime = T0) -> Conversation:
    return lifecycle.open_conversation(
        "c_1", inbound(sent_at=at), "support", at, policy
    ).conversation


def active(agent: AgentContext = MARIA) -> Conversation:
    return lifecycle.accept(opened(), agent, T0).conversation


def test_open_conversation_is_waiting_with_window() -> None:
    t = lifecycle.open_conversation("c_1", inbound(), "support", T0, WA)
    c = t.conversation
    assert c.state == State.WAITING and c.queued_at == T0 and c.agent is None
    assert c.window_expires_at == T0 + timedelta(hours=24)
    assert c.channel == "wa-main" and c.channel_type == "whatsapp"
    assert [e.type for e in t.events] == ["conversation.created"]
    assert t.distribute == "support"


def test_window_runs_from_provider_timestamp() -> None:
    sent = T0 - timedelta(hours=2)
    c = lifecycle.open_conversation("c", inbound(sent_at=sent), "q", T0, WA).conversation
    assert c.window_expires_at == sent + timedelta(hours=22) + timedelta(hours=2)
    # An older message delivered late never shortens the window.
    later = lifecycle.customer_message(c, inbound(sent_at=sent - timedelta(hours=1)), T0, WA)
    assert later.conversation.window_expires_at == c.window_expires_at


@pytest.mark.parametrize("late_by", [timedelta(hours=24), timedelta(days=3)])
def test_a_message_arriving_after_its_window_opens_inactive(late_by: timedelta) -> None:
    """Nobody may answer it in free text: not queued, not distributed, no timers."""
    t = lifecycle.open_conversation("c", inbound(sent_at=T0 - late_by), "q", T0, WA)
    c = t.conversation
    assert (c.state, c.inactive_reason) == (State.INACTIVE, "window_expired")
    assert c.agent is None and c.no_agent_at is None
    assert t.distribute is None and lifecycle.deadlines_of(c) == {}
    assert [e.type for e in t.events] == ["conversation.created"]
    # a second inside the window: an ordinary waiting conversation
    fresh = lifecycle.open_conversation(
        "c", inbound(sent_at=T0 - timedelta(hours=24) + timedelta(seconds=1)), "q", T0, WA
    )
    assert fresh.conversation.state == State.WAITING and fresh.distribute == "q"


def test_window_never_starts_in_the_future() -> None:
    """A provider timestamp ahead of our clock (skew, or a forged payload) counts as now."""
    ahead = T0 + timedelta(days=10)
    c = lifecycle.open_conversation("c", inbound(sent_at=ahead), "q", T0, WA).conversation
    assert c.window_expires_at == T0 + timedelta(hours=24)
    # The conversation's last customer message counts as now too (the message itself keeps
    # the provider's time): else a "window closed" verdict on a reply sent before that future
    # time was taken as older than the customer's last message, and ignored.
    assert c.last_customer_message_at == T0
    later = lifecycle.customer_message(c, inbound(sent_at=ahead), T0 + timedelta(hours=1), WA)
    assert later.conversation.window_expires_at == T0 + timedelta(hours=25)
    assert later.conversation.last_customer_message_at == T0 + timedelta(hours=1)
    refused = lifecycle.provider_window_closed(
        later.conversation, T0 + timedelta(hours=2), sent_at=T0 + timedelta(hours=1, minutes=30)
    )
    assert refused.conversation.state == State.INACTIVE


def test_window_from_arrival_ignores_the_senders_clock() -> None:
    """An email's Date is the sender's PC clock: two days behind, it must neither open the
    conversation expired nor shorten the window (the window runs from when it reached us)."""
    mail = ChannelPolicy(reply_window=timedelta(hours=24), window_from_arrival=True)
    behind = T0 - timedelta(days=2)
    t = lifecycle.open_conversation("c", inbound(sent_at=behind), "q", T0, mail)
    c = t.conversation
    assert c.state == State.WAITING and t.distribute == "q"
    assert c.window_expires_at == T0 + timedelta(hours=24)
    # Where reconcile measures the window again from: the arrival, not the Date.
    assert c.last_customer_message_at == T0
    assert lifecycle.can_reply(c, T0 + timedelta(hours=23))
    later = T0 + timedelta(hours=10)
    after = lifecycle.customer_message(c, inbound(sent_at=behind), later, mail).conversation
    assert after.window_expires_at == later + timedelta(hours=24)
    assert after.last_customer_message_at == later
    # Without the flag (WhatsApp: the provider's timestamp) the same message is expired.
    expired = lifecycle.open_conversation("c", inbound(sent_at=behind), "q", T0, WA)
    assert expired.conversation.state == State.INACTIVE


def test_accept_requires_queue_and_capacity() -> None:
    c = opened()
    outsider = AgentContext("x", frozenset({"sales"}), 5)
    with pytest.raises(TransitionError) as err:
        lifecycle.accept(c, outsider, T0)
    assert err.value.code == "not_on_queue"
    full = dataclasses.replace(MARIA, active_count=2)
    with pytest.raises(TransitionError) as err:
        lifecycle.accept(c, full, T0)
    assert err.value.code == "max_active_reached"
    taken = lifecycle.accept(c, MARIA, T0).conversation
    assert taken.state == State.ACTIVE and taken.agent == "maria"
    with pytest.raises(TransitionError) as err:
        lifecycle.accept(taken, JOSE, T0)
    assert err.value.code == "already_taken"
    assert "another agent" in err.value.message
    again = lifecycle.accept(taken, MARIA, T0)  # maria's retry: nothing changes, no error
    assert not again.changed and again.conversation is taken and again.events == ()


def test_pending_resume_close() -> None:
    c = active()
    with pytest.raises(TransitionError) as err:
        lifecycle.set_pending(c, "jose", T0, NO_REQUEUE)
    assert err.value.code == "not_assignee"
    p = lifecycle.set_pending(c, "maria", T0, NO_REQUEUE).conversation
    assert p.state == State.PENDING and p.agent == "maria" and p.requeue_at is None
    assert p.pending_reason == "set_aside"
    r = lifecycle.resume(p, MARIA, T0).conversation
    assert r.state == State.ACTIVE
    closed = lifecycle.close(r, MARIA, T0).conversation
    assert closed.state == State.CLOSED and closed.closed_at == T0
    with pytest.raises(TransitionError):
        lifecycle.close(closed, MARIA, T0)


def test_resume_only_while_window_open() -> None:
    p = lifecycle.set_pending(active(), "maria", T0, NO_REQUEUE).conversation
    late = T0 + timedelta(hours=25)
    with pytest.raises(TransitionError) as err:
        lifecycle.resume(p, MARIA, late)
    assert err.value.code == "window_closed"


def test_requeue_after_keeps_queued_at() -> None:
    c = active()
    p = lifecycle.set_pending(c, "maria", T0, QueuePolicy(timedelta(minutes=10))).conversation
    assert p.requeue_at == T0 + timedelta(minutes=10)
    assert not lifecycle.requeue_due(p, T0 + timedelta(minutes=9), WA).changed
    w = lifecycle.requeue_due(p, T0 + timedelta(minutes=10), WA)
    assert w.conversation.state == State.WAITING
    assert w.conversation.agent is None
    assert w.conversation.queued_at == c.queued_at
    assert w.distribute == "support"


def test_window_expiry_makes_inactive() -> None:
    c = active()
    assert not lifecycle.expire_window(c, T0 + timedelta(hours=23)).changed
    t = lifecycle.expire_window(c, T0 + timedelta(hours=24))
    assert t.conversation.state == State.INACTIVE
    assert t.conversation.inactive_reason == "window_expired"
    assert not lifecycle.can_reply(t.conversation, T0)


def test_provider_window_closed_early() -> None:
    t = lifecycle.provider_window_closed(active(), T0 + timedelta(hours=1))
    assert t.conversation.state == State.INACTIVE
    assert t.conversation.window_expires_at == T0 + timedelta(hours=1)


def test_no_agent_timeout() -> None:
    c = opened(WEB)
    assert c.no_agent_at == T0 + timedelta(minutes=5)
    due = T0 + timedelta(minutes=5)
    nobody = QueuePresence(online=False)
    t = lifecycle.no_agent_due(c, due, nobody, WEB)
    assert t.conversation.state == State.INACTIVE
    assert t.conversation.inactive_reason == "no_agent_available"
    # Someone online: the customer is just waiting to be accepted.
    rearmed = lifecycle.no_agent_due(c, due, QueuePresence(online=True), WEB)
    assert rearmed.conversation.state == State.WAITING
    assert rearmed.conversation.no_agent_at == due + timedelta(minutes=5)
    assert rearmed.bookkeeping and rearmed.events == ()  # stored without a new version
    # The last agent left two minutes ago: not yet five minutes without anyone.
    recently = QueuePresence(online=False, last_seen_at=due - timedelta(minutes=2))
    moved = lifecycle.no_agent_due(c, due, recently, WEB)
    assert moved.conversation.no_agent_at == due + timedelta(minutes=3)


def test_a_customer_writing_to_a_pending_chat_arms_the_no_agent_timeout() -> None:
    accepted = lifecycle.accept(opened(WEB), MARIA, T0).conversation
    assert accepted.no_agent_at is None
    pending = lifecycle.agent_lost(accepted, "maria", T0, QueuePolicy(timedelta(minutes=30)))
    assert lifecycle.deadlines_of(pending.conversation).keys() == {lifecycle.DEADLINE_REQUEUE}
    wrote = T0 + timedelta(minutes=1)
    written = lifecycle.customer_message(pending.conversation, inbound(sent_at=wrote), wrote, WEB)
    c = written.conversation
    assert c.state == State.PENDING and c.no_agent_at == wrote + timedelta(minutes=5)
    assert lifecycle.DEADLINE_NO_AGENT in lifecycle.deadlines_of(c)
    due = wrote + timedelta(minutes=5)
    gone = lifecycle.no_agent_due(c, due, QueuePresence(online=False), WEB).conversation
    assert (gone.state, gone.inactive_reason) == (State.INACTIVE, "no_agent_available")
    # Taken back, or requeued (keeping how long the customer has waited): as before.
    resumed = lifecycle.resume(c, MARIA, due - timedelta(seconds=1)).conversation
    assert resumed.no_agent_at is None and not lifecycle.deadlines_of(resumed)
    requeued = lifecycle.requeue_due(c, T0 + timedelta(minutes=30), WEB).conversation
    assert requeued.state == State.WAITING and requeued.no_agent_at == c.no_agent_at


def test_a_web_chat_left_by_its_agent_starts_the_no_agent_timeout() -> None:
    accepted = lifecycle.accept(opened(WEB), MARIA, T0).conversation
    lost = lifecycle.agent_lost(accepted, "maria", T0, NO_REQUEUE, WEB).conversation
    assert lost.state == State.PENDING and lost.no_agent_at == T0 + timedelta(minutes=5)
    assert lifecycle.DEADLINE_NO_AGENT in lifecycle.deadlines_of(lost)
    on_whatsapp = lifecycle.agent_lost(active(), "maria", T0, NO_REQUEUE, WA).conversation
    assert on_whatsapp.no_agent_at is None  # no such timer on that channel


def test_agent_lost_sets_pending_keeping_agent() -> None:
    t = lifecycle.agent_lost(active(), "maria", T0, NO_REQUEUE)
    assert t.conversation.state == State.PENDING and t.conversation.agent == "maria"
    assert t.events[0].change == "agent_offline"
    assert not lifecycle.agent_lost(active(), "jose", T0, NO_REQUEUE).changed


def test_transfer_to_queue_and_agent() -> None:
    c = active()
    to_queue = lifecycle.transfer(c, "maria", T0 + timedelta(minutes=1), to_queue="sales")
    assert to_queue.conversation.state == State.WAITING
    assert to_queue.conversation.queue == "sales" and to_queue.conversation.agent is None
    to_agent = lifecycle.transfer(c, "maria", T0, to_agent=JOSE)
    assert to_agent.conversation.agent == "jose" and to_agent.conversation.state == State.ACTIVE
    outsider = AgentContext("x", frozenset({"sales"}), 5)
    with pytest.raises(TransitionError):
        lifecycle.transfer(c, "maria", T0, to_agent=outsider)


def test_deadlines_of() -> None:
    c = opened(WEB)
    assert lifecycle.deadlines_of(c) == {"no_agent": T0 + timedelta(minutes=5)}
    a = lifecycle.accept(c, MARIA, T0).conversation
    assert lifecycle.deadlines_of(a) == {}


# --- properties ---------------------------------------------------------------------------------

AGENTS = [MARIA, JOSE, AgentContext("ana", frozenset({"support"}), 1)]
CONTACTS = ["+1", "+2", "+3"]

op = st.one_of(
    st.tuples(st.just("message"), st.sampled_from(CONTACTS), st.integers(-7200, 0)),
    st.tuples(st.just("accept"), st.integers(0, 9), st.sampled_from(AGENTS)),
    st.tuples(st.just("pending"), st.integers(0, 9), st.sampled_from(AGENTS)),
    st.tuples(st.just("resume"), st.integers(0, 9), st.sampled_from(AGENTS)),
    st.tuples(st.just("close"), st.integers(0, 9), st.sampled_from(AGENTS)),
    st.tuples(st.just("transfer"), st.integers(0, 9), st.sampled_from(AGENTS)),
    st.tuples(st.just("advance"), st.integers(1, 3 * 3600), st.booleans()),
    st.tuples(st.just("lost"), st.integers(0, 9), st.sampled_from(AGENTS)),
)


def _step(
    conversations: list[Conversation], action: tuple[object, ...], now: datetime
) -> tuple[datetime, Transition | None, int | None]:
    kind = action[0]
    policy = ChannelPolicy(timedelta(hours=24), timedelta(minutes=5))
    queue_policy = QueuePolicy(timedelta(minutes=30))
    if kind == "message":
        address, offset = str(action[1]), int(action[2])  # type: ignore[call-overload]
        msg = inbound(address=address, sent_at=now + timedelta(seconds=offset))
        for i, c in enumerate(conversations):
            if c.is_open and c.contact.address == address:
                return now, lifecycle.customer_message(c, msg, now, policy), i
        cid = f"c_{len(conversations)}"
        return now, lifecycle.open_conversation(cid, msg, "support", now, policy), None
    if kind == "advance":
        return now + timedelta(seconds=int(action[1])), None, None  # type: ignore[call-overload]
    if not conversations:
        return now, None, None
    index = int(action[1]) % len(conversations)  # type: ignore[call-overload]
    c = conversations[index]
    agent = action[2]
    assert isinstance(agent, AgentContext)
    load = sum(1 for x in conversations if x.state == State.ACTIVE and x.agent == agent.id)
    agent = dataclasses.replace(agent, active_count=load)
    rules = {
        "accept": lambda: lifecycle.accept(c, agent, now),
        "pending": lambda: lifecycle.set_pending(c, agent.id, now, queue_policy),
        "resume": lambda: lifecycle.resume(c, agent, now),
        "close": lambda: lifecycle.close(c, agent, now),
        "transfer": lambda: lifecycle.transfer(c, agent.id, now, to_queue="support"),
        "lost": lambda: lifecycle.agent_lost(c, agent.id, now, queue_policy),
    }
    try:
        return now, rules[str(kind)](), index
    except TransitionError:
        return now, None, None


def _fire_deadlines(conversations: list[Conversation], now: datetime) -> None:
    policy = ChannelPolicy(timedelta(hours=24), timedelta(minutes=5))
    for i, c in enumerate(conversations):
        for kind, due in lifecycle.deadlines_of(c).items():
            if due <= now:
                t = lifecycle.on_deadline(c, kind, now, policy, QueuePresence(online=False))
                assert (c.state, t.conversation.state) in ALLOWED_EDGES or not t.changed
                conversations[i] = c = t.conversation


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_invariants_hold_for_any_sequence(actions: list[tuple[object, ...]]) -> None:
    conversations: list[Conversation] = []
    now = T0
    for action in actions:
        now, transition, index = _step(conversations, action, now)
        if transition is not None:
            after = transition.conversation
            if index is None:
                conversations.append(after)
            else:
                before = conversations[index]
                if before.state != after.state:
                    assert (before.state, after.state) in ALLOWED_EDGES
                assert before.state in lifecycle.OPEN_STATES or not transition.changed
                conversations[index] = after
        if action[0] == "advance" and action[2]:
            _fire_deadlines(conversations, now)
        # One open conversation per contact and channel.
        open_keys = [(c.channel, c.contact.address) for c in conversations if c.is_open]
        assert len(open_keys) == len(set(open_keys))
        # Nobody holds more than max_active.
        for agent in AGENTS:
            load = sum(1 for c in conversations if c.state == State.ACTIVE and c.agent == agent.id)
            assert load <= agent.max_active
        # Waiting conversations are unassigned; active ones have an agent.
        for c in conversations:
            assert (c.state == State.WAITING) == (c.agent is None and c.is_open)
            assert c.queued_at <= now


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=30))
def test_waiting_order_is_queued_at_order(offsets: list[int]) -> None:
    convs = [
        dataclasses.replace(opened(), id=f"c_{i:03}", queued_at=T0 + timedelta(seconds=o))
        for i, o in enumerate(offsets)
    ]
    ordered = lifecycle.waiting_order(reversed(convs))
    keys = [c.queued_at for c in ordered]
    assert keys == sorted(keys)
