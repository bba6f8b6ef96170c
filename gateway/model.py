"""The normalized data the whole gateway speaks: contacts, conversations, messages, events.

Adapters turn provider traffic into these frozen dataclasses; the lifecycle, the store and the
HTTP layer only ever see them. Every value here is immutable so a transition is a new object and
an old snapshot can be compared against the stored version (compare-and-set).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar

import orjson


class State(StrEnum):
    """Inbox states of DESIGN section 1; the values are the wire names."""

    WAITING = "waiting"
    ACTIVE = "active"
    PENDING = "pending"
    INACTIVE = "inactive"
    CLOSED = "closed"


OPEN_STATES = frozenset({State.WAITING, State.ACTIVE, State.PENDING})


class InactiveReason(StrEnum):
    """Why a conversation can no longer be answered (plugins may use their own strings)."""

    WINDOW_EXPIRED = "window_expired"
    NO_AGENT_AVAILABLE = "no_agent_available"
    CHANNEL_REMOVED = "channel_removed"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class DeliveryState(StrEnum):
    """Outbound delivery states; they only ever move forward (see `DELIVERY_RANK`)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


# `failed` ranks above `sent` (a failure report ends the message) but a message that was already
# delivered or read cannot fail afterwards: a late `failed` never overwrites `read`.
DELIVERY_RANK: dict[DeliveryState, int] = {
    DeliveryState.QUEUED: 0,
    DeliveryState.SENT: 1,
    DeliveryState.FAILED: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.READ: 4,
}


UNCERTAIN_FAILURES = frozenset({"channel_unavailable", "internal_error"})
"""Failure codes the gateway gives a send whose outcome it could not learn: every try timed out
or found the provider unreachable (it may have taken the message all the same), or the provider
took it and recording its answer failed. Unlike a provider's own `failed`, these are lifted by
the provider's later report that the message went out: that report is the truth, and an agent
shown a false `failed` sends the message again."""


def status_moves_forward(
    current: DeliveryState | None, new: DeliveryState, error_code: str | None = None
) -> bool:
    """Tell whether a delivery report `new` may replace `current` (whose error is `error_code`).

    Only outbound messages have a delivery state (from `queued` on); a message without one is
    a customer's, and a report naming its provider id (an id collision, or a confused
    provider) must not give it one. `failed` is final, unless the gateway itself failed the
    message without knowing its outcome (`UNCERTAIN_FAILURES`) and the provider now says it
    went out.
    """
    if current is None:
        return False
    if current == DeliveryState.FAILED:
        return error_code in UNCERTAIN_FAILURES and new != DeliveryState.FAILED
    return DELIVERY_RANK[new] > DELIVERY_RANK[current]


@dataclass(frozen=True, slots=True)
class Contact:
    """The customer as the channel knows them: E.164 phone, email, visitor id or provider id."""

    address: str
    display_name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file carried by a message; media lives at the provider, referenced by id or URL."""

    kind: str
    url: str | None = None
    media_id: str | None = None
    mime_type: str | None = None
    caption: str | None = None
    filename: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer message as an adapter hands it to ingest, before it has a conversation.

    `provider_message_id` is the dedup key within the channel; adapters without one must derive
    a stable one (a client id, a Message-ID, a content hash) so a retry is never a second message.
    `sent_at` is the provider's timestamp: the reply window is measured on it (unless the
    channel's policy says `window_from_arrival`: then from when it reached us).
    `thread_refs` are provider ids of earlier messages this one answers (email References),
    used to link a new conversation to the one it continues.
    `updates` names a message this one modifies (reaction, edit, revoke) by provider id.
    """

    channel: str
    channel_type: str
    provider: str
    provider_message_id: str
    contact: Contact
    sent_at: datetime
    kind: str = "text"
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    thread_refs: tuple[str, ...] = ()
    updates: str | None = None
    subject: str | None = None
    wakes_conversation: bool = True
    raw: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message, inbound or outbound, as agents and integrators see it."""

    id: str
    conversation_id: str
    channel: str
    channel_type: str
    provider: str
    direction: Direction
    kind: str
    text: str | None
    sent_at: datetime
    received_at: datetime
    provider_message_id: str | None = None
    status: DeliveryState | None = None
    status_at: datetime | None = None
    error_code: str | None = None
    error_message: str | None = None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    updates: str | None = None
    subject: str | None = None
    contact: Contact | None = None
    agent: str | None = None
    client_id: str | None = None
    template: dict[str, Any] | None = None
    raw: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """A provider's report about an outbound message, keyed by its provider id."""

    channel: str
    provider_message_id: str
    status: DeliveryState
    at: datetime
    error_code: str | None = None
    error_message: str | None = None
    closes_window: bool = False
    raw: Any = None
    message_id: str | None = None
    """Our id of the message, when the provider echoes it back (Meta's
    `biz_opaque_callback_data`, the query of our Twilio StatusCallback): lets a report find
    its message before the send's answer recorded the provider id, e.g. after a crash."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """One attention: a contact on one channel instance, in one inbox state.

    `version` increases by one on every stored change; transitions are compare-and-set on it.
    `queued_at` is the FIFO key of the waiting queue and survives requeue.
    `window_expires_at`, `no_agent_at` and `requeue_at` are the deadlines this conversation
    carries; the store indexes them so the timer scheduler finds what is due.
    """

    id: str
    channel: str
    channel_type: str
    provider: str
    contact: Contact
    state: State
    queue: str
    created_at: datetime
    updated_at: datetime
    queued_at: datetime
    version: int = 1
    agent: str | None = None
    last_message_at: datetime | None = None
    last_customer_message_at: datetime | None = None
    window_expires_at: datetime | None = None
    no_agent_at: datetime | None = None
    requeue_at: datetime | None = None
    inactive_reason: str | None = None
    preview: str | None = None
    subject: str | None = None
    closed_at: datetime | None = None
    previous_conversation_id: str | None = None
    pending_reason: str | None = None
    """Why it was last set pending: `set_aside` (its agent did) or `agent_offline` (its agent
    stayed offline past the grace). Kept as it was when the conversation leaves `pending`;
    the API shows it only while the conversation is pending."""

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only normalized event log (DESIGN section 6).

    `type` is one of `message.received`, `message.sent`, `message.status`,
    `conversation.created`, `conversation.updated`; `change` says what changed for
    `conversation.updated` (accepted, pending, resumed, closed, inactive, ...).
    `cursor` is assigned by the store when the event is appended. `moved_from` is where the
    conversation was when this change took it from a queue or an agent (see `Placement`).
    """

    type: str
    at: datetime
    conversation: Conversation | None = None
    message: Message | None = None
    change: str | None = None
    cursor: str | None = None
    moved_from: Placement | None = None

    def with_cursor(self, cursor: str) -> Event:
        return Event(
            self.type,
            self.at,
            self.conversation,
            self.message,
            self.change,
            cursor,
            self.moved_from,
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """A conversation's queue and agent before a change that moved it elsewhere.

    Agents see a conversation's events while it is on one of their queues or theirs; the
    event that moves it away (a transfer to another queue, say) must still reach those who
    saw it until then, or their inbox keeps showing it where it no longer is.
    """

    queue: str
    agent: str | None = None


_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)


@cache
def _fields_of(cls: type) -> tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]]:
    names = tuple(f.name for f in dataclasses.fields(cls))
    index = {name: i for i, name in enumerate(names)}
    if len(names) > 1:
        # One C call reads every field: attrgetter of several names returns a tuple.
        return operator.attrgetter(*names), index
    return (lambda obj: tuple(getattr(obj, name) for name in names)), index


def evolve(obj: _T, **changes: Any) -> _T:
    """`dataclasses.replace` for the model's dataclasses at about a third of the cost.

    `replace` introspects the class on every call (13 µs for a Conversation); transitions and
    the store's writer thread make several copies per message. This reads the field list once
    per class and calls the constructor positionally; like `replace` it refuses unknown names.
    (Every model field is an `__init__` field, which `replace` does not require.)
    """
    cls: type = type(obj)
    read, index = _fields_of(cls)
    values = list(read(obj))
    for name, value in changes.items():
        position = index.get(name)
        if position is None:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        values[position] = value
    new: _T = cls(*values)
    return new


_NO_VALUE: Any = object()


def fast_init(cls: _C) -> _C:
    """Give a frozen, slotted record class a faster `__init__`: same signature, same object.

    A frozen dataclass's generated `__init__` stores every field through
    `object.__setattr__(self, "name", value)`, a lookup by name per field: about 5 µs for a
    Conversation, and one webhook builds a dozen records. Storing through each slot's own
    descriptor (what that lookup finds) takes half the time. The class stays frozen:
    assignment after construction still raises `FrozenInstanceError`.

    Use it as a class decorator above `@dataclass(frozen=True, slots=True)` on records that
    every webhook builds (the model's own are done below).
    """
    namespace: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    params: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.kw_only or f.name.startswith("_"):  # pragma: no cover - guard
            raise TypeError(f"{cls.__name__}.{f.name}: not a plain field")
        setter = f"_set_{f.name}"
        namespace[setter] = cls.__dict__[f.name].__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_NO_VALUE")
            value = f"_factory_{f.name}() if {f.name} is _NO_VALUE else {f.name}"
        else:
            params.append(f.name)
        body.append(f"    {setter}(self, {value})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    type.__setattr__(cls, "__init__", init)
    return cls


for _record in (Contact, Attachment, InboundMessage, Message, DeliveryStatus, Conversation, Event):
    fast_init(_record)


def with_status(message: Message, status: DeliveryStatus) -> Message:
    """The message after a delivery report (the caller checked `status_moves_forward`): the
    new state and its time; a report without error details keeps the ones already known, except
    that a lifted gateway-side failure leaves none."""
    if message.status == DeliveryState.FAILED:  # lifted (see `UNCERTAIN_FAILURES`)
        return evolve(
            message, status=status.status, status_at=status.at, error_code=None, error_message=None
        )
    return evolve(
        message,
        status=status.status,
        status_at=status.at,
        error_code=status.error_code if status.error_code else message.error_code,
        error_message=status.error_message if status.error_message else message.error_message,
    )


def utc(dt: datetime) -> datetime:
    """Normalize a datetime to aware UTC (naive values are taken as UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def iso(dt: datetime | None) -> str | None:
    """Render a timestamp the way the API promises: ISO 8601 UTC with a trailing Z."""
    if dt is None:
        return None
    return utc(dt).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _default(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


# orjson writes datetimes itself (no call back into Python per field, several times faster);
# for the model's aware UTC times the text is exactly `iso()`'s: ISO 8601 with a trailing Z.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    """Serialize dataclasses (and dicts of them) with orjson; datetimes as ISO UTC."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def dumps_event(
    event: Event, conversation_json: bytes | None = None, message_json: bytes | None = None
) -> bytes:
    """`dumps(event)`, byte for byte, reusing JSON already made for its conversation and message.

    A new conversation's first message is written as the conversation row, the message row and
    two events embedding them; serializing each once saves most of the encoding work.
    """
    conversation: Any = event.conversation
    if conversation is not None and conversation_json is not None:
        conversation = orjson.Fragment(conversation_json)
    message: Any = event.message
    if message is not None and message_json is not None:
        message = orjson.Fragment(message_json)
    document = {
        "type": event.type,
        "at": event.at,
        "conversation": conversation,
        "message": message,
        "change": event.change,
        "cursor": event.cursor,
        "moved_from": event.moved_from,
    }
    return orjson.dumps(document, default=_default, option=_OPTIONS)


def to_dict(value: Any) -> Any:
    """Convert a dataclass (or container of them) into JSON-ready primitives."""
    return orjson.loads(dumps(value))
