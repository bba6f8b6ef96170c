"""The model's fast paths must be exact copies of the slow ones they replace."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import (
    Attachment,
    Contact,
    Conversation,
    Direction,
    Event,
    Message,
    State,
    dumps,
    dumps_event,
    evolve,
)

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
