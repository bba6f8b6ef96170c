"""The model's fast paths must be exact copies of the slow ones they replace."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.lifecycle import Transition
from gateway.model import (
    Attachment,
    Contact,
    Conversation,
    DeliveryStatus,
    Direction,
    Event,
    InboundMessage,
    Message,
    State,
    dumps,
    dumps_event,
    evolve,
)
from gateway.store.base import IngestPlan, IngestResult, OutboundResult, StatusResult
from plugins.whatsapp.meta_content import Content

NOW = datetime(2026, 11, 26, 7, 0, 0, 123456, tzinfo=UTC)
CONVERSATION = Conversation(
    id="c_01",
    channel="wa",
    channel_type="whatsapp",
    provider="cloud_api",
    contact=Contact("+5511999990000", "Ana"),
    state=State.WAITING,
    queue="support",
    created_at=NOW,
    updated_at=NOW,
    queued_at=NOW,
    window_expires_at=NOW + timedelta(hours=24),
    preview='Hola ñandú \u2028 "quoted"',
)
MESSAGE = Message(
    id="m_01",
    conversation_id="c_01",
    channel="wa",
    channel_type="whatsapp",
    provider="cloud_api",
    direction=Direction.IN,
    kind="image",
    text="caption",
    sent_at=NOW,
    received_at=NOW,
    provider_message_id="wamid.X",
    attachments=(Attachment(kind="image", media_id="9", mime_type="image/jpeg"),),
    raw={"nested": [1, 2.5, None, {"k": "v"}], "emoji": "\U0001f600"},
    extra={"phone_number_id": "1"},
)

conversation_changes = st.fixed_dictionaries(
    {},
    optional={
        "version": st.integers(0, 10**6),
        "state": st.sampled_from(list(State)),
        "agent": st.none() | st.text(max_size=8),
        "updated_at": st.datetimes(timezones=st.just(UTC)),
        "preview": st.none() | st.text(max_size=40),
        "no_agent_at": st.none() | st.datetimes(timezones=st.just(UTC)),
    },
)


@given(conversation_changes)
def test_evolve_is_dataclasses_replace(changes: dict[str, object]) -> None:
    assert evolve(CONVERSATION, **changes) == dataclasses.replace(CONVERSATION, **changes)


def test_evolve_refuses_a_field_the_class_does_not_have() -> None:
    with pytest.raises(TypeError, match="no field 'nope'"):
        evolve(CONVERSATION, nope=1)


@pytest.mark.parametrize(
    "event",
    [
        Event(type="conversation.created", at=NOW, conversation=CONVERSATION),
        Event(type="message.received", at=NOW, conversation=CONVERSATION, message=MESSAGE),
        Event(type="conversation.updated", at=NOW, conversation=CONVERSATION, change="accepted"),
        Event(type="message.status", at=NOW, message=MESSAGE, cursor="0000000000000007"),
        Event(type="typing", at=NOW),
    ],
)
def test_dumps_event_with_reused_parts_is_dumps_byte_for_byte(event: Event) -> None:
    conversation_json = dumps(event.conversation) if event.conversation else None
    message_json = dumps(event.message) if event.message else None
    assert dumps_event(event, conversation_json, message_json) == dumps(event)
    assert dumps_event(event) == dumps(event)


RECORDS = [
    Contact,
    Attachment,
    InboundMessage,
    Message,
    DeliveryStatus,
    Conversation,
    Event,
    # records that every webhook builds outside the model (see `fast_init`)
    Transition,
    IngestPlan,
    IngestResult,
    StatusResult,
    OutboundResult,
    Content,
]


def _stock_copy(cls: type) -> type:
    """The same fields as a plain `@dataclass(frozen=True, slots=True)`: the reference init."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    made: type = dataclasses.make_dataclass(f"Stock{cls.__name__}", fields, frozen=True, slots=True)
    return made


def _values(cls: type) -> dict[str, object]:
    return {f.name: f"value-of-{f.name}" for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_fast_init_builds_what_the_dataclass_init_builds(cls: type) -> None:
    stock = _stock_copy(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    given = _values(cls)
    by_keyword, by_position = cls(**given), cls(*given.values())
    for name in names:
        assert getattr(by_keyword, name) == getattr(by_position, name) == given[name]
    required = {
        f.name: given[f.name]
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    ours, reference = cls(**required), stock(**required)
    assert [getattr(ours, n) for n in names] == [getattr(reference, n) for n in names]
    if "extra" in names:  # a default_factory makes a fresh dict per record
        assert cls(**required).extra is not ours.extra
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.__setattr__(names[0], "changed")
    with pytest.raises(TypeError):
        cls(**required, not_a_field=1)
    with pytest.raises(TypeError):
        cls()  # required fields stay required


def test_decoding_a_stored_conversation_again_is_a_lookup_that_cannot_go_stale() -> None:
    """The memo is keyed by the stored bytes: equal bytes give the one object, and any change
    to the document (a new version, another preview) decodes afresh."""
    from gateway.codec import decode_conversation, remember_conversation

    blob = dumps(evolve(CONVERSATION, id="c_memo", preview="first"))
    first = decode_conversation(blob)
    assert decode_conversation(bytes(bytearray(blob))) is first  # same bytes, another object

    changed = dumps(evolve(CONVERSATION, id="c_memo", preview="second", version=2))
    second = decode_conversation(changed)
    assert (second.preview, second.version) == ("second", 2)
    assert decode_conversation(blob) is first

    # A writer primes it with what it stored; the primed object is what a read returns.
    written = evolve(CONVERSATION, id="c_primed", version=7)
    written_blob = dumps(written)
    remember_conversation(written_blob, written)
    assert decode_conversation(bytes(bytearray(written_blob))) is written
    assert decode_conversation(written_blob) == written


def test_the_conversation_memo_is_bounded() -> None:
    from gateway.codec import _DecodedConversations

    memo = _DecodedConversations(3)
    blobs = [dumps(evolve(CONVERSATION, id=f"c_{i}")) for i in range(5)]
    decoded = [memo.decode(blob) for blob in blobs]
    assert len(memo._items) == 3
    assert memo.decode(blobs[4]) is decoded[4]  # kept: among the newest
    assert memo.decode(blobs[0]) is not decoded[0]  # evicted: decoded afresh, still equal
    assert memo.decode(blobs[0]) == decoded[0]
