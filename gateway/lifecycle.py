"""The conversation state machine: pure functions `(conversation, event, now) -> Transition`.

Nothing here does I/O or reads a clock: callers pass `now` and whatever facts the rule needs
(the agent's queues and load, whether a queue has agents online). The store applies the
resulting conversation with compare-and-set on `version`, so the same rules run over SQLite and
Redis and every rule is testable without sleeping.

Allowed edges (DESIGN section 1); `inactive` and `closed` are terminal, a later customer
message opens a new conversation:

    waiting -> active (accept/assign) | inactive (window, no agent)
               | closed (only a message that opens nothing: `archived_conversation`)
    active  -> pending | closed | inactive (window) | waiting (transfer to a queue) | active
    pending -> active (resume) | waiting (requeue) | inactive (window) | closed
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.errors import TransitionError
from gateway.model import (
    OPEN_STATES,
    Conversation,
    Event,
    InactiveReason,
    InboundMessage,
    Message,
    Placement,
    State,
    evolve,
    fast_init,
)

ALLOWED_EDGES: frozenset[tuple[State, State]] = frozenset(
    {
        (State.WAITING, State.ACTIVE),
        (State.WAITING, State.INACTIVE),
        (State.WAITING, State.CLOSED),
        (State.WAITING, State.WAITING),
        (State.ACTIVE, State.PENDING),
        (State.ACTIVE, State.CLOSED),
        (State.ACTIVE, State.INACTIVE),
        (State.ACTIVE, State.WAITING),
        (State.ACTIVE, State.ACTIVE),
        (State.PENDING, State.ACTIVE),
        (State.PENDING, State.WAITING),
        (State.PENDING, State.INACTIVE),
        (State.PENDING, State.CLOSED),
        (State.PENDING, State.PENDING),
        # History moves only queue (its queue left the config: see `orphaned`).
        (State.INACTIVE, State.INACTIVE),
        (State.CLOSED, State.CLOSED),
    }
)

PREVIEW_CHARS = 120

DEADLINE_WINDOW = "window"
DEADLINE_NO_AGENT = "no_agent"
DEADLINE_REQUEUE = "requeue"
NO_AGENT_STATES = frozenset({State.WAITING, State.PENDING})
"""Where a customer waits for an agent of the queue, so the no-agent timeout applies."""

PENDING_REASONS = {"pending": "set_aside", "agent_offline": "agent_offline"}
"""The `pending_reason` a conversation gets, by the change that set it pending: the agent set
it aside, or the agent stayed offline past `agent_disconnect_grace`."""


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """A channel instance's session rules: the reply window and the no-agent timeout."""

    reply_window: timedelta | None = None
    no_agent_timeout: timedelta | None = None
    window_from_arrival: bool = False
    """Measure the reply window (and `last_customer_message_at`, which reconcile measures
    it again from) from when the message reached us, not from its own timestamp. For
    channels whose timestamp is the sender's word rather than the provider's (an email's
    Date is the customer's PC clock: two days behind, it would open the conversation with
    its window already lapsed, and email has no templates to answer it with)."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """A queue's rules that the lifecycle needs: when pending work goes back to waiting."""

    requeue_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What the lifecycle must know about an agent to let them take a conversation."""

    id: str
    queues: frozenset[str]
    max_active: int
    active_count: int = 0


@dataclass(frozen=True, slots=True)
class QueuePresence:
    """Whether anyone of a queue is online, and when the last one was seen if nobody is."""

    online: bool
    last_seen_at: datetime | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of a rule: the new conversation and the events to append with it.

    `distribute` names a queue whose automatic distribution should run after the commit.
    `changed` is False when the rule decided nothing needs to be written.
    `bookkeeping` is True when only what the conversation keeps for its own timers changed
    (no event, nothing any reader is shown): it is stored without a new `version`, so a
    version seen through the API always has its event in the log (events audit: a no-agent
    check moved on every timeout while agents were online raised it, with nothing logged).
    """

    conversation: Conversation
    events: tuple[Event, ...] = ()
    distribute: str | None = None
    changed: bool = True
    bookkeeping: bool = False


def preview_of(text: str | None, kind: str) -> str:
    """Return the inbox preview of a message: its first characters, or its kind in brackets."""
    if text:
        flat = " ".join(text.split())
        return flat[:PREVIEW_CHARS]
    return f"[{kind}]"


def can_reply(conversation: Conversation, now: datetime) -> bool:
    """Tell whether free-form text may be sent now (open and inside the reply window)."""
    if conversation.state not in OPEN_STATES:
        return False
    expires = conversation.window_expires_at
    return expires is None or now < expires


def deadlines_of(conversation: Conversation) -> dict[str, datetime]:
    """Return the deadlines a stored conversation carries, by kind; the store indexes these."""
    due: dict[str, datetime] = {}
    if conversation.state in OPEN_STATES and conversation.window_expires_at is not None:
        due[DEADLINE_WINDOW] = conversation.window_expires_at
    if conversation.state in NO_AGENT_STATES and conversation.no_agent_at is not None:
        due[DEADLINE_NO_AGENT] = conversation.no_agent_at
    if conversation.state == State.PENDING and conversation.requeue_at is not None:
        due[DEADLINE_REQUEUE] = conversation.requeue_at
    return due


def _updated(
    before: Conversation, after: Conversation, change: str, now: datetime
) -> tuple[Event, ...]:
    if (before.state, after.state) not in ALLOWED_EDGES:
        raise AssertionError(f"lifecycle bug: {before.state} -> {after.state}")
    moved = before.queue != after.queue or (
        before.agent is not None and before.agent != after.agent
    )
    moved_from = Placement(before.queue, before.agent) if moved else None
    return (Event("conversation.updated", now, after, change=change, moved_from=moved_from),)


def _customer_time(message: InboundMessage, policy: ChannelPolicy, now: datetime) -> datetime:
    """When the customer wrote, as the window counts it: the provider's timestamp, but never
    from the future (a clock that runs ahead, or a forged timestamp, must not keep a
    conversation answerable longer); or when it reached us, on a channel whose timestamp is
    the sender's own (`window_from_arrival`)."""
    return now if policy.window_from_arrival else min(message.sent_at, now)


def _window_end(
    current: datetime | None, wrote_at: datetime, policy: ChannelPolicy
) -> datetime | None:
    """The window runs from `wrote_at` (see `_customer_time`); a message older than one
    already counted never shortens it."""
    if policy.reply_window is None:
        return None
    end = wrote_at + policy.reply_window
    return end if current is None or end > current else current


def open_conversation(
    conversation_id: str,
    message: InboundMessage,
    queue: str,
    now: datetime,
    policy: ChannelPolicy,
    previous_conversation_id: str | None = None,
) -> Transition:
    """Start a waiting conversation for a customer who has no open one on this channel.

    A message whose reply window had already lapsed when it reached us (a provider delivering
    a day late: the window runs from the provider's timestamp, unless the channel's policy
    says `window_from_arrival`) opens the conversation
    `inactive` (`window_expired`) at once: nobody could answer it in free text, so it must
    not wait in a queue, be handed to an agent or take a place of their `max_active`, only to
    turn inactive a moment later. An agent still finds it and may send a template.
    """
    wrote_at = _customer_time(message, policy, now)
    conversation = Conversation(
        id=conversation_id,
        channel=message.channel,
        channel_type=message.channel_type,
        provider=message.provider,
        contact=message.contact,
        state=State.WAITING,
        queue=queue,
        created_at=now,
        updated_at=now,
        queued_at=now,
        last_message_at=now,
        last_customer_message_at=wrote_at,
        window_expires_at=_window_end(None, wrote_at, policy),
        no_agent_at=now + policy.no_agent_timeout if policy.no_agent_timeout else None,
        preview=preview_of(message.text, message.kind),
        subject=message.subject,
        previous_conversation_id=previous_conversation_id,
    )
    expires = conversation.window_expires_at
    if expires is not None and expires <= now:
        conversation = evolve(
            conversation,
            state=State.INACTIVE,
            inactive_reason=InactiveReason.WINDOW_EXPIRED,
            no_agent_at=None,
        )
        event = Event(type="conversation.created", at=now, conversation=conversation)
        return Transition(conversation, (event,))
    event = Event(type="conversation.created", at=now, conversation=conversation)
    return Transition(conversation, (event,), distribute=queue)


def customer_message(
    conversation: Conversation, message: InboundMessage, now: datetime, policy: ChannelPolicy
) -> Transition:
    """Record a new customer message on an open conversation: window, preview, contact name."""
    if not conversation.is_open:
        raise TransitionError("invalid_transition", "a closed conversation takes no messages")
    no_agent_at = conversation.no_agent_at
    if conversation.state in NO_AGENT_STATES and no_agent_at is None and policy.no_agent_timeout:
        # Waiting, or set aside (its agent dropped off, say): the customer wrote and needs an
        # agent of the queue; if none is online for the timeout, the chat goes inactive.
        no_agent_at = now + policy.no_agent_timeout
    contact = conversation.contact
    if message.contact.display_name and message.contact.display_name != contact.display_name:
        contact = evolve(contact, display_name=message.contact.display_name)
    wrote_at = _customer_time(message, policy, now)
    last_customer = conversation.last_customer_message_at
    if last_customer is None or wrote_at > last_customer:
        last_customer = wrote_at
    after = evolve(
        conversation,
        contact=contact,
        updated_at=now,
        last_message_at=now,
        last_customer_message_at=last_customer,
        window_expires_at=_window_end(conversation.window_expires_at, wrote_at, policy),
        no_agent_at=no_agent_at,
        preview=preview_of(message.text, message.kind),
    )
    event = Event(type="conversation.updated", at=now, conversation=after, change="message")
    return Transition(after, (event,))


def agent_message(conversation: Conversation, message: Message, now: datetime) -> Transition:
    """Record an agent's outbound message: preview and activity time move, state does not."""
    after = evolve(
        conversation,
        updated_at=now,
        last_message_at=now,
        preview=preview_of(message.text, message.kind),
    )
    return Transition(after, ())


def _require_queue(conversation: Conversation, agent: AgentContext) -> None:
    if conversation.queue not in agent.queues:
        raise TransitionError(
            "not_on_queue", f"agent {agent.id} is not on queue {conversation.queue}"
        )


def _require_capacity(agent: AgentContext) -> None:
    if agent.active_count >= agent.max_active:
        raise TransitionError(
            "max_active_reached",
            f"agent {agent.id} already has {agent.active_count} active conversations",
        )


def _require_assignee(conversation: Conversation, agent_id: str) -> None:
    if conversation.agent != agent_id:
        raise TransitionError("not_assignee", "the conversation is assigned to another agent")


def accept(
    conversation: Conversation, agent: AgentContext, now: datetime, change: str = "accepted"
) -> Transition:
    """Give a waiting conversation to an agent of its queue who has capacity left.

    The agent who already holds it active accepting again (a retried request) changes
    nothing and succeeds: still exactly one winner, and a retry is not told it lost.
    """
    if conversation.state != State.WAITING:
        if conversation.state == State.ACTIVE and conversation.agent == agent.id:
            return Transition(conversation, (), changed=False)
        if conversation.state in (State.ACTIVE, State.PENDING):
            if conversation.agent == agent.id:  # pending: set aside by this very agent
                raise TransitionError(
                    "already_taken", "you set this conversation aside; resume it instead"
                )
            raise TransitionError("already_taken", "the conversation was taken by another agent")
        raise TransitionError(
            "invalid_transition", f"{_a(conversation.state)} conversation cannot be accepted"
        )
    _require_queue(conversation, agent)
    _require_capacity(agent)
    after = evolve(
        conversation,
        state=State.ACTIVE,
        agent=agent.id,
        updated_at=now,
        no_agent_at=None,
        requeue_at=None,
    )
    return Transition(after, _updated(conversation, after, change, now))


def assign(conversation: Conversation, agent: AgentContext, now: datetime) -> Transition:
    """Automatic distribution: the same rule as accept, recorded as `assigned`."""
    return accept(conversation, agent, now, change="assigned")


def set_pending(
    conversation: Conversation, agent_id: str, now: datetime, queue_policy: QueuePolicy
) -> Transition:
    """Set an active conversation aside; `requeue_after` arms its way back to waiting."""
    if conversation.state != State.ACTIVE:
        raise TransitionError(
            "invalid_transition",
            f"only an active conversation can be set pending, not {conversation.state}",
        )
    _require_assignee(conversation, agent_id)
    return _to_pending(conversation, now, queue_policy, "pending")


def _to_pending(
    conversation: Conversation,
    now: datetime,
    queue_policy: QueuePolicy,
    change: str,
    no_agent_at: datetime | None = None,
) -> Transition:
    requeue_at = now + queue_policy.requeue_after if queue_policy.requeue_after else None
    after = evolve(
        conversation,
        state=State.PENDING,
        updated_at=now,
        requeue_at=requeue_at,
        no_agent_at=conversation.no_agent_at or no_agent_at,
        pending_reason=PENDING_REASONS[change],
    )
    return Transition(after, _updated(conversation, after, change, now))


def resume(conversation: Conversation, agent: AgentContext, now: datetime) -> Transition:
    """Take a pending conversation back, only while the channel still allows a reply."""
    if conversation.state != State.PENDING:
        raise TransitionError(
            "invalid_transition",
            f"only a pending conversation can be resumed, not {conversation.state}",
        )
    _require_assignee(conversation, agent.id)
    if not can_reply(conversation, now):
        raise TransitionError("window_closed", "the channel no longer allows a reply")
    _require_capacity(agent)
    after = evolve(
        conversation, state=State.ACTIVE, updated_at=now, requeue_at=None, no_agent_at=None
    )
    return Transition(after, _updated(conversation, after, "resumed", now))


def close(conversation: Conversation, agent: AgentContext, now: datetime) -> Transition:
    """Finish a conversation: only its assignee closes it, from active or pending.

    A waiting conversation leaves the queue only by being accepted or assigned, or by channel
    expiry (DESIGN.md section 1), so an agent accepts it before closing it: every closed
    conversation names who finished it.
    """
    if conversation.state == State.WAITING:
        raise TransitionError(
            "invalid_transition",
            "a waiting conversation leaves the queue only by being accepted: accept it, then close",
        )
    if conversation.state not in (State.ACTIVE, State.PENDING):
        raise TransitionError(
            "invalid_transition", f"{_a(conversation.state)} conversation cannot be closed"
        )
    _require_assignee(conversation, agent.id)
    after = evolve(
        conversation,
        state=State.CLOSED,
        updated_at=now,
        closed_at=now,
        no_agent_at=None,
        requeue_at=None,
    )
    return Transition(after, _updated(conversation, after, "closed", now))


def transfer(
    conversation: Conversation,
    agent_id: str,
    now: datetime,
    *,
    to_queue: str | None = None,
    to_agent: AgentContext | None = None,
    policy: ChannelPolicy | None = None,
) -> Transition:
    """Hand an active or pending conversation to another queue (waiting) or another agent."""
    if conversation.state not in (State.ACTIVE, State.PENDING):
        raise TransitionError(
            "invalid_transition", f"{_a(conversation.state)} conversation cannot be transferred"
        )
    _require_assignee(conversation, agent_id)
    if to_agent is not None:
        target = evolve(conversation, queue=to_queue or conversation.queue)
        _require_queue(target, to_agent)
        _require_capacity(to_agent)
        after = evolve(
            target, state=State.ACTIVE, agent=to_agent.id, updated_at=now, requeue_at=None
        )
        return Transition(after, _updated(conversation, after, "transferred", now))
    if to_queue is None:
        raise TransitionError("invalid_request", "transfer needs a queue or an agent")
    no_agent_timeout = policy.no_agent_timeout if policy else None
    after = evolve(
        conversation,
        state=State.WAITING,
        queue=to_queue,
        agent=None,
        queued_at=now,
        updated_at=now,
        requeue_at=None,
        no_agent_at=now + no_agent_timeout if no_agent_timeout else None,
    )
    return Transition(after, _updated(conversation, after, "transferred", now), distribute=to_queue)


def orphaned(
    conversation: Conversation,
    now: datetime,
    policy: ChannelPolicy,
    *,
    queue: str | None = None,
    agent_gone: bool = False,
) -> Transition:
    """The config no longer has the conversation's queue (`queue` is where routing puts it
    now) or its agent (`agent_gone`): nobody could see or act on it, so it moves where
    someone can. A conversation whose agent is gone (or is no longer on its queue) waits
    again, at its original place in the queue (`queued_at` kept): it was not the customer's
    fault. One whose queue is gone keeps its state and agent; an inactive or closed one only
    moves queue, so agents of the new one can still look its contact up.
    """
    if queue is None and not agent_gone:
        return _unchanged(conversation)
    after = evolve(conversation, queue=queue or conversation.queue, updated_at=now)
    change = "queue_removed"
    if conversation.state not in OPEN_STATES:  # history: moved to a listed queue, as it was
        return Transition(after, _updated(conversation, after, change, now))
    if agent_gone and conversation.agent is not None:
        timeout = policy.no_agent_timeout
        after = evolve(
            after,
            state=State.WAITING,
            agent=None,
            requeue_at=None,
            no_agent_at=now + timeout if timeout else None,
        )
        change = "agent_removed"
    distribute = after.queue if after.state == State.WAITING else None
    return Transition(after, _updated(conversation, after, change, now), distribute=distribute)


def reply_window_changed(
    conversation: Conversation, now: datetime, expires_at: datetime | None
) -> Transition:
    """The channel's `reply_window` changed in the config: an open conversation's window is
    measured again from the customer's last message, so a mistaken setting can be corrected
    for the conversations it already governs (one now lapsed is expired by its timer)."""
    if conversation.state not in OPEN_STATES or conversation.window_expires_at == expires_at:
        return _unchanged(conversation)
    after = evolve(conversation, window_expires_at=expires_at)
    return Transition(after, _updated(conversation, after, "reply_window_changed", now))


def channel_removed(conversation: Conversation, now: datetime) -> Transition:
    """The conversation's channel is no longer in the config (removed or renamed): no reply
    can reach its customer, so an open one is inactive (`channel_removed`)."""
    if conversation.state not in OPEN_STATES:
        return _unchanged(conversation)
    return _inactive(conversation, now, InactiveReason.CHANNEL_REMOVED)


def _inactive(conversation: Conversation, now: datetime, reason: str) -> Transition:
    after = evolve(
        conversation,
        state=State.INACTIVE,
        inactive_reason=reason,
        updated_at=now,
        no_agent_at=None,
        requeue_at=None,
    )
    return Transition(after, _updated(conversation, after, "inactive", now))


def _unchanged(conversation: Conversation) -> Transition:
    return Transition(conversation, (), changed=False)


def expire_window(conversation: Conversation, now: datetime) -> Transition:
    """The reply window lapsed: an open conversation becomes inactive (`window_expired`)."""
    expires = conversation.window_expires_at
    if conversation.state not in OPEN_STATES or expires is None or expires > now:
        return _unchanged(conversation)
    return _inactive(conversation, now, InactiveReason.WINDOW_EXPIRED)


def provider_window_closed(
    conversation: Conversation, now: datetime, sent_at: datetime | None = None
) -> Transition:
    """The provider refused a send as outside the window: close the window early.

    The verdict is about the window as it was when the refused message was sent (`sent_at`,
    when known). A customer who wrote since then opened it again, and reports come late and
    out of order: a verdict older than their last message changes nothing. (The customer's
    time is the provider's, in whole seconds: one who wrote within the second after the send
    still loses the window; a few seconds later, they keep it.)
    """
    if conversation.state not in OPEN_STATES:
        return _unchanged(conversation)
    last_customer = conversation.last_customer_message_at
    if sent_at is not None and last_customer is not None and last_customer > sent_at:
        return _unchanged(conversation)
    closed = evolve(conversation, window_expires_at=now)
    return _inactive(closed, now, InactiveReason.WINDOW_EXPIRED)


def no_agent_due(
    conversation: Conversation, now: datetime, presence: QueuePresence, policy: ChannelPolicy
) -> Transition:
    """The no-agent deadline came: inactive if nobody of the queue was online for the timeout.

    If an agent is online the customer is merely waiting to be accepted (or resumed), so the
    check is moved one timeout later; if the last agent left recently, it is moved to
    `last_seen + timeout`. Armed on a waiting conversation, and on a pending one the customer
    wrote to (DESIGN.md section 1: a pending conversation leaves by channel expiry too).
    """
    due = conversation.no_agent_at
    timeout = policy.no_agent_timeout
    if conversation.state not in NO_AGENT_STATES or due is None or due > now or timeout is None:
        return _unchanged(conversation)
    if presence.online:
        rearmed = evolve(conversation, no_agent_at=now + timeout)
        return Transition(rearmed, (), bookkeeping=True)
    if presence.last_seen_at is not None and presence.last_seen_at + timeout > now:
        rearmed = evolve(conversation, no_agent_at=presence.last_seen_at + timeout)
        return Transition(rearmed, (), bookkeeping=True)
    return _inactive(conversation, now, InactiveReason.NO_AGENT_AVAILABLE)


def requeue_due(conversation: Conversation, now: datetime, policy: ChannelPolicy) -> Transition:
    """A pending conversation waited `requeue_after`: back to waiting at its original place."""
    due = conversation.requeue_at
    if conversation.state != State.PENDING or due is None or due > now:
        return _unchanged(conversation)
    after = evolve(
        conversation,
        state=State.WAITING,
        agent=None,
        updated_at=now,
        requeue_at=None,
        # A customer who wrote while it was pending has waited for an agent since then.
        no_agent_at=conversation.no_agent_at
        or (now + policy.no_agent_timeout if policy.no_agent_timeout else None),
    )
    return Transition(
        after, _updated(conversation, after, "requeued", now), distribute=conversation.queue
    )


def agent_lost(
    conversation: Conversation,
    agent_id: str,
    now: datetime,
    queue_policy: QueuePolicy,
    policy: ChannelPolicy | None = None,
) -> Transition:
    """The agent stayed offline past the grace: their active conversation becomes pending.

    On a channel with a no-agent timeout (web chat) the timer starts too: the customer was
    left by their agent, and if nobody of the queue comes online for that long the chat goes
    inactive, as a waiting one would, instead of staying pending with nobody to answer it.
    """
    if conversation.state != State.ACTIVE or conversation.agent != agent_id:
        return _unchanged(conversation)
    timeout = policy.no_agent_timeout if policy is not None else None
    no_agent_at = now + timeout if timeout is not None else None
    return _to_pending(conversation, now, queue_policy, "agent_offline", no_agent_at)


def on_deadline(
    conversation: Conversation,
    kind: str,
    now: datetime,
    policy: ChannelPolicy,
    presence: QueuePresence,
) -> Transition:
    """Dispatch a fired deadline of `kind` to its rule; stale deadlines change nothing."""
    if kind == DEADLINE_WINDOW:
        return expire_window(conversation, now)
    if kind == DEADLINE_NO_AGENT:
        return no_agent_due(conversation, now, presence, policy)
    if kind == DEADLINE_REQUEUE:
        return requeue_due(conversation, now, policy)
    return _unchanged(conversation)


def waiting_order(conversations: Iterable[Conversation]) -> list[Conversation]:
    """Sort conversations the way the waiting queue serves them: oldest `queued_at` first."""
    return sorted(conversations, key=lambda c: (c.queued_at, c.id))


def archived_conversation(
    conversation_id: str, message: InboundMessage, queue: str, now: datetime
) -> Transition:
    """Keep a message that must not wake anyone (an auto-reply) in a closed conversation."""
    opened = open_conversation(conversation_id, message, queue, now, ChannelPolicy())
    after = evolve(opened.conversation, state=State.CLOSED, closed_at=now)
    event = Event(type="conversation.created", at=now, conversation=after)
    return Transition(after, (event,))


def _a(word: str) -> str:
    """`a waiting`, `an active`: error messages are read by people."""
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"
