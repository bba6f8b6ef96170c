"""The store contract: the only I/O for conversation state, one Protocol for every backend.

Every method that changes state is atomic: the conversation row, its indexes (queue order,
agent load, deadlines) and the event log entries it produces are written in one step or not at
all. Conversation changes are compare-and-set on `Conversation.version`; the store assigns the
new version (expected + 1) and stamps it into the events it appends.

`tests/store/test_contract.py` is the executable form of this contract and runs against every
implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from gateway.errors import VersionConflict
from gateway.lifecycle import Transition
from gateway.model import (
    Conversation,
    DeliveryStatus,
    Event,
    InboundMessage,
    Message,
    State,
    evolve,
    fast_init,
)


@fast_init
@dataclass(frozen=True, slots=True)
class IngestPlan:
    """What ingest decided for one inbound message: the conversation change and the message."""

    transition: Transition
    message: Message


IngestPlanner = Callable[[Conversation | None, Conversation | None], IngestPlan]
"""Called inside the store's atomic step with (open conversation of the contact on the channel,
conversation that `thread_refs` point to); must be pure and fast."""


@fast_init
@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    message: Message
    conversation: Conversation
    events: tuple[Event, ...] = ()
    distribute: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class StatusResult:
    """`message` is None for an unknown provider id; `moved` is False for a stale report.

    `closes_window` is True when a report applied here said the provider's reply window is
    closed (reports kept from before the send returned included): the caller closes it.
    """

    message: Message | None
    moved: bool
    conversation: Conversation | None = None
    events: tuple[Event, ...] = ()
    closes_window: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class OutboundResult:
    message: Message
    created: bool
    conversation: Conversation
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Deadline:
    """A due time for a target: `conversation:<id>` or `agent:<id>`, of a kind."""

    target: str
    kind: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class AgentPresence:
    online: bool
    last_seen_at: datetime | None


class Store(Protocol):
    async def open(self) -> None:
        """Create the schema if needed and start background resources."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release everything."""
        ...

    async def ping(self) -> bool:
        """Tell whether the backend answers (readiness)."""
        ...

    async def problem(self) -> str | None:
        """Why the store is not ready, None when it is: `unreachable` (it does not answer),
        `writes_failing` (it answers, but writes fail: a full disk, Redis out of memory or
        read-only) or `files_gone` (SQLite: the database files were deleted or replaced).
        `ping` is `problem() is None`."""
        ...

    # conversations -------------------------------------------------------------------------
    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def get_conversations(self, conversation_ids: Collection[str]) -> dict[str, Conversation]:
        """Read many conversations at once (the timer sweep); missing ids are left out."""
        ...

    async def find_open_conversation(self, channel: str, address: str) -> Conversation | None: ...

    async def list_conversations(
        self,
        state: State,
        *,
        queues: Collection[str] | None = None,
        agent: str | None = None,
        limit: int = 200,
        after: ListPosition | None = None,
    ) -> list[Conversation]:
        """List by state; waiting oldest `queued_at` first, others most recently updated first.
        With `after` (`list_position` of the last one of a page), only those that come after it
        in that order: the next page."""
        ...

    async def count_by_state(self, *, agent: str | None = None) -> dict[tuple[str, str], int]:
        """Return conversation counts by (state, queue), for metrics; with `agent`, only those
        assigned to that agent in an open state (waiting, active, pending): what
        `list_conversations(agent=...)` lists, counted. An agent's inactive and closed ones
        are not counted: they grow with the agent's history, without end, and counting them
        would read all of it (on Redis, inside a script that holds every other client)."""
        ...

    async def agent_loads(self) -> dict[str, int]:
        """Return the number of active conversations per agent."""
        ...

    async def update_conversation(
        self,
        transition: Transition,
        expected_version: int,
        *,
        max_active: int | None = None,
    ) -> tuple[Conversation, tuple[Event, ...]]:
        """Compare-and-set a lifecycle transition; raise VersionConflict if it moved on.

        With `max_active`, an assignment is refused (TransitionError `max_active_reached`) when
        the agent already holds that many active conversations, checked in the same step.
        """
        ...

    async def update_conversations(
        self, items: Sequence[tuple[Transition, int]]
    ) -> list[tuple[Conversation, tuple[Event, ...]] | VersionConflict]:
        """Compare-and-set many transitions at once; each one is atomic on its own.

        Returns, in order, the stored conversation and its events, or the VersionConflict of
        an item that lost its race (the others are still applied).
        """
        ...

    # messages --------------------------------------------------------------------------------
    async def ingest(self, inbound: InboundMessage, planner: IngestPlanner) -> IngestResult:
        """Dedup on (channel, provider message id), then append the planned message and change."""
        ...

    async def add_outbound(
        self,
        transition: Transition,
        expected_version: int,
        message: Message,
        idempotency_key: str | None,
        deliver_by: datetime | None = None,
    ) -> OutboundResult:
        """Store an agent's message (queued) unless the idempotency key was already used.

        `deliver_by` arms a `message:<id>`/`deliver` deadline in the same step: if the node that
        should deliver dies, the scheduler of any node retries the delivery then.
        """
        ...

    async def find_idempotent(self, conversation_id: str, key: str) -> Message | None:
        """Return the message stored earlier under this Idempotency-Key, if any."""
        ...

    async def record_send(
        self,
        message_id: str,
        *,
        provider_message_id: str | None,
        status: DeliveryStatus | None,
    ) -> StatusResult:
        """Attach the provider id a send returned and/or a status, forward-only."""
        ...

    async def apply_status(self, status: DeliveryStatus) -> StatusResult:
        """Apply a provider delivery report by provider id; only forward moves are stored.

        A report for an id no message carries yet is kept and applied by `record_send` when a
        send returns that id (providers may report before their send API has answered).
        """
        ...

    async def get_message(self, message_id: str) -> Message | None: ...

    async def find_message(self, channel: str, provider_message_id: str) -> Message | None: ...

    async def list_recent_messages(
        self, conversation_id: str, *, before: str | None = None, limit: int = 1000
    ) -> list[Message]:
        """The newest `limit` messages of a conversation, oldest of them first; with `before`
        (the id of one of its messages), only those stored before it: pages back through a
        long conversation. Messages are in the order they were stored, which is the event
        log's (ids come from each node's clock, so they may not be); a `before` that is not
        one of this conversation's messages has nothing before it."""
        ...

    async def list_contact_messages(
        self, channel: str, address: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Message]:
        """Messages of every conversation of a contact on a channel, in the order they were
        stored (the event log's, not by id); with `after` (the id of one of them), those
        stored after it: a reader that resumes after the last message it was pushed misses
        nothing, even one stored after it with a smaller id (made on a node whose clock is
        behind, or just before it). Nothing follows an `after` that is not one of them."""
        ...

    # event log ---------------------------------------------------------------------------------
    async def read_events(self, after: str | None, limit: int = 500) -> list[Event]:
        """Events strictly after `after` (None: from the start), in log order.

        Cursors are opaque strings that compare (as strings) in log order, so a consumer that
        merges a catch-up read with live events can drop what it already has.
        """
        ...

    async def wait_events(self, after: str | None, timeout: float) -> list[Event]:
        """Like read_events, but wait up to `timeout` seconds for the first new event."""
        ...

    async def last_cursor(self) -> str | None: ...

    async def prune_events(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` of the oldest events, those stored before `before`; return how
        many went. A cursor among them stays valid: reading after it starts at the oldest
        event kept. When an event was stored is the store's to know, not the event's `at`
        (a delivery report's is the provider's time); `before` is on this node's clock, and a
        store with a clock of its own (Redis) applies it as an age on that clock."""
        ...

    async def events_missed(self, after: str | None) -> bool:
        """Whether retention deleted events that came after `after` (None: the start of the
        log): a reader resuming there does not get them, and should rebuild what it keeps from
        the conversations themselves. Pruning takes the oldest events first, so this is "some
        pruned event is newer than `after`"."""
        ...

    async def cursor_issued(self, cursor: str) -> bool:
        """Whether `cursor` is one this log could have handed out: well formed in this store's
        format and at or before the newest event. An empty log has issued none; the start of
        the log is "no cursor" (None or ""), never a made-up number."""
        ...

    async def publish_ephemeral(self, event: Event) -> None:
        """Hand an event that is not stored (typing indicators) to every node's hub."""
        ...

    def ephemeral_events(self) -> AsyncIterator[Event]:
        """Events any node published with `publish_ephemeral`; one consumer per node (the hub).

        Best effort: what a node misses while it reconnects is lost, which is fine for what
        travels here (nothing of a conversation's record).
        """
        ...

    # deadlines ---------------------------------------------------------------------------------
    async def claim_due(
        self, now: datetime, limit: int, lease: timedelta, node: str | None = None
    ) -> list[Deadline]:
        """Lease due deadlines so concurrent schedulers do not fire the same one at once.

        With `node`, the lease is recorded as that node's: when the node is found dead
        (`reap_nodes`, `presence_drop_node`) its leases are released at once, so a deadline it
        claimed and never handled fires after the heartbeat TTL instead of the whole lease.
        """
        ...

    async def set_deadline(self, target: str, kind: str, due_at: datetime) -> None: ...

    async def clear_deadline(self, target: str, kind: str, due_at: datetime | None = None) -> None:
        """Remove a deadline (only the one due at `due_at`, when given)."""
        ...

    async def next_due(self) -> datetime | None:
        """Return the earliest due time of any deadline (the scheduler sleeps until then)."""
        ...

    # presence ----------------------------------------------------------------------------------
    async def presence_connect(self, agent: str, connection: str, node: str, now: datetime) -> None:
        """Record a live agent connection; cancels a pending disconnect grace."""
        ...

    async def presence_disconnect(
        self, agent: str, connection: str, now: datetime, grace: timedelta
    ) -> bool:
        """Drop a connection; when it was the agent's last, arm the grace deadline (True)."""
        ...

    async def presence_drop_node(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        """Forget a node that is gone: every connection it recorded (arming the grace of the
        agents it leaves offline), its heartbeat and its deadline leases; return those agents."""
        ...

    async def presence_startup(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        """Called once when a node starts (after its first `node_heartbeat`): forget connections
        that cannot be alive any more and arm the grace of the agents they leave offline with
        active conversations; return those agents. An agent who had no connection (one working
        over REST alone) is left alone.

        SQLite is one process, so every connection recorded before is gone. Redis is shared:
        only connections of nodes whose heartbeat lapsed are forgotten, and an agent whose grace
        is already armed keeps it (another node's restart does not extend it).
        """
        ...

    async def node_heartbeat(self, node: str, now: datetime, ttl: timedelta) -> bool:
        """Record that `node` is alive until `now + ttl` (each node calls it well within ttl).

        Return False if the node was not known alive: new, or its heartbeat lapsed (it may have
        been reaped, so it must record its live connections again).
        """
        ...

    async def reap_nodes(self, now: datetime, grace: timedelta) -> list[str]:
        """Forget every node whose heartbeat lapsed, as `presence_drop_node` does; return the
        agents left offline (their grace starts now). Any node may call it; it is idempotent.
        """
        ...

    async def presence(self) -> dict[str, AgentPresence]: ...

    # small durable values (cursors, round-robin pointers) --------------------------------------
    async def kv_get(self, key: str) -> str | None: ...

    async def kv_set(self, key: str, value: str) -> None: ...

    async def kv_compare_set(self, key: str, expected: str | None, value: str) -> bool: ...


HEALTH_PROBE_KEY = "health:probe"
"""The key-value entry `ping` writes while writes are failing (a full disk, Redis out of memory
or read-only): the store is ready again once a write succeeds, not when reads do."""

AGENT_TARGET = "agent:"
CONVERSATION_TARGET = "conversation:"
MESSAGE_TARGET = "message:"
GRACE_KIND = "presence_grace"
DELIVER_KIND = "deliver"


def message_target(message_id: str) -> str:
    return MESSAGE_TARGET + message_id


ListPosition = tuple[int, str]
"""Where a conversation stands in a state's listing: its sort time in microseconds (`queued_at`
while waiting, `updated_at` otherwise) and its id, which breaks ties."""


def list_position(conversation: Conversation) -> ListPosition:
    """The position to pass as `after` for the page that follows `conversation`."""
    at = conversation.queued_at if conversation.state == State.WAITING else conversation.updated_at
    return (int(at.timestamp() * 1_000_000), conversation.id)


def conversation_target(conversation_id: str) -> str:
    return CONVERSATION_TARGET + conversation_id


def agent_target(agent: str) -> str:
    return AGENT_TARGET + agent


def next_version(transition: Transition, expected_version: int) -> int:
    """The version a transition is stored with: one more than the one it was decided on,
    except bookkeeping (`Transition.bookkeeping`), which keeps it. The compare-and-set still
    checks `expected_version`, so a bookkeeping write loses to any change made meanwhile; a
    change decided on the copy from before it may carry the older timer back, which only makes
    that timer check again sooner."""
    if transition.bookkeeping and expected_version > 0:
        return expected_version
    return expected_version + 1


def stamp_version(events: Sequence[Event], conversation: Conversation) -> tuple[Event, ...]:
    """Make every event carry the stored conversation (with its final version)."""
    return tuple(
        e
        if e.conversation is None or e.conversation is conversation
        else evolve(e, conversation=conversation)
        for e in events
    )
