"""Turn stored JSON back into model dataclasses (orjson writes them; this reads them).

Stores keep each conversation, message and event as one orjson document, so both stores share
one encoding and a record read back compares equal to the one written.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import orjson

from gateway.model import (
    Attachment,
    Contact,
    Conversation,
    DeliveryState,
    DeliveryStatus,
    Direction,
    Event,
    Message,
    Placement,
    State,
    dumps,
    parse_iso,
)


def encode(value: Any) -> bytes:
    return dumps(value)


def _dt(value: Any) -> datetime:
    parsed = parse_iso(value)
    if parsed is None:
        raise ValueError("missing timestamp")
    return parsed


def contact_from(data: dict[str, Any]) -> Contact:
    return Contact(address=data["address"], display_name=data.get("display_name"))


def attachment_from(data: dict[str, Any]) -> Attachment:
    return Attachment(**data)


def conversation_from(data: dict[str, Any]) -> Conversation:
    return Conversation(
        id=data["id"],
        channel=data["channel"],
        channel_type=data["channel_type"],
        provider=data["provider"],
        contact=contact_from(data["contact"]),
        state=State(data["state"]),
        queue=data["queue"],
        created_at=_dt(data["created_at"]),
        updated_at=_dt(data["updated_at"]),
        queued_at=_dt(data["queued_at"]),
        version=data["version"],
        agent=data.get("agent"),
        last_message_at=parse_iso(data.get("last_message_at")),
        last_customer_message_at=parse_iso(data.get("last_customer_message_at")),
        window_expires_at=parse_iso(data.get("window_expires_at")),
        no_agent_at=parse_iso(data.get("no_agent_at")),
        requeue_at=parse_iso(data.get("requeue_at")),
        inactive_reason=data.get("inactive_reason"),
        preview=data.get("preview"),
        subject=data.get("subject"),
        closed_at=parse_iso(data.get("closed_at")),
        previous_conversation_id=data.get("previous_conversation_id"),
        pending_reason=data.get("pending_reason"),
    )


def message_from(data: dict[str, Any]) -> Message:
    contact = data.get("contact")
    status = data.get("status")
    return Message(
        id=data["id"],
        conversation_id=data["conversation_id"],
        channel=data["channel"],
        channel_type=data["channel_type"],
        provider=data["provider"],
        direction=Direction(data["direction"]),
        kind=data["kind"],
        text=data.get("text"),
        sent_at=_dt(data["sent_at"]),
        received_at=_dt(data["received_at"]),
        provider_message_id=data.get("provider_message_id"),
        status=DeliveryState(status) if status else None,
        status_at=parse_iso(data.get("status_at")),
        error_code=data.get("error_code"),
        error_message=data.get("error_message"),
        attachments=tuple(attachment_from(a) for a in data.get("attachments") or ()),
        reply_to=data.get("reply_to"),
        updates=data.get("updates"),
        subject=data.get("subject"),
        contact=contact_from(contact) if contact else None,
        agent=data.get("agent"),
        client_id=data.get("client_id"),
        template=data.get("template"),
        raw=data.get("raw"),
        extra=data.get("extra") or {},
    )


def event_from(data: dict[str, Any], cursor: str | None = None) -> Event:
    conversation = data.get("conversation")
    message = data.get("message")
    return Event(
        type=data["type"],
        at=_dt(data["at"]),
        conversation=conversation_from(conversation) if conversation else None,
        message=message_from(message) if message else None,
        change=data.get("change"),
        cursor=cursor if cursor is not None else data.get("cursor"),
        moved_from=_placement(data.get("moved_from")),
    )


def _placement(data: dict[str, Any] | None) -> Placement | None:
    return None if data is None else Placement(queue=data["queue"], agent=data.get("agent"))


class _DecodedConversations:
    """Conversations by the exact JSON they were stored as, so decoding one again is a lookup.

    Every customer message reads its open conversation back from the store, and decoding that
    document (a dozen timestamps) was the largest Python cost of a follow-up message. The bytes
    are the key, so a hit can never be stale: the same document always decodes to an equal
    (frozen) Conversation. Writers prime it with what they just encoded, which is exactly what
    the next message reads. Bounded; the oldest entries go first.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: dict[bytes | str, Conversation] = {}
        self._lock = threading.Lock()  # the writer and the reader threads both decode

    def decode(self, blob: bytes | str) -> Conversation:
        hit = self._items.get(blob)
        if hit is not None:
            return hit
        conversation = conversation_from(orjson.loads(blob))
        self.remember(blob, conversation)
        return conversation

    def remember(self, blob: bytes | str, conversation: Conversation) -> None:
        """Record that `blob` is the stored JSON of `conversation` (what `encode` made of it)."""
        with self._lock:
            items = self._items
            items[blob] = conversation
            if len(items) > self._size:
                del items[next(iter(items))]


_decoded_conversations = _DecodedConversations(4096)
remember_conversation = _decoded_conversations.remember


def decode_conversation(blob: bytes | str) -> Conversation:
    return _decoded_conversations.decode(blob)


def decode_message(blob: bytes | str) -> Message:
    return message_from(orjson.loads(blob))


def decode_event(blob: bytes | str, cursor: str | None = None) -> Event:
    return event_from(orjson.loads(blob), cursor)


def decode_status(blob: bytes | str) -> DeliveryStatus:
    data = orjson.loads(blob)
    return DeliveryStatus(
        channel=data["channel"],
        provider_message_id=data["provider_message_id"],
        status=DeliveryState(data["status"]),
        at=_dt(data["at"]),
        error_code=data.get("error_code"),
        error_message=data.get("error_message"),
        closes_window=bool(data.get("closes_window")),
        raw=data.get("raw"),
        message_id=data.get("message_id"),
    )
