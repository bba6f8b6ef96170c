"""The JSON shapes of DESIGN section 5: conversations, messages and events as the API shows them.

Fields may be added here, never removed or renamed: integrators build against these names.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import datetime
from typing import Any

from gateway import lifecycle
from gateway.model import Attachment, Conversation, Event, Message, State, iso


def attachment_json(attachment: Attachment) -> dict[str, Any]:
    return {
        "kind": attachment.kind,
        "url": attachment.url,
        "media_id": attachment.media_id,
        "mime_type": attachment.mime_type,
        "caption": attachment.caption,
        "filename": attachment.filename,
        "size": attachment.size,
    }


def conversation_json(
    conversation: Conversation, now: datetime, channels: Container[str]
) -> dict[str, Any]:
    """`channels`: the channel names configured now. A conversation whose channel was removed
    from the config cannot be answered, whatever its window says (a reply would be refused)."""
    pending = conversation.state == State.PENDING
    return {
        "id": conversation.id,
        "state": str(conversation.state),
        "channel": conversation.channel,
        "channel_type": conversation.channel_type,
        "provider": conversation.provider,
        "queue": conversation.queue,
        "agent": conversation.agent,
        "contact": {
            "address": conversation.contact.address,
            "display_name": conversation.contact.display_name,
        },
        "queued_at": iso(conversation.queued_at),
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
        "last_message_at": iso(conversation.last_message_at),
        "last_customer_message_at": iso(conversation.last_customer_message_at),
        "window_expires_at": iso(conversation.window_expires_at),
        "can_reply": conversation.channel in channels and lifecycle.can_reply(conversation, now),
        "inactive_reason": conversation.inactive_reason,
        "preview": conversation.preview,
        "subject": conversation.subject,
        "closed_at": iso(conversation.closed_at),
        "previous_conversation_id": conversation.previous_conversation_id,
        "version": conversation.version,
        # Why it is pending, and when it goes back to waiting unless resumed (the queue's
        # `requeue_after`): null in every other state.
        "pending_reason": conversation.pending_reason if pending else None,
        "requeue_at": iso(conversation.requeue_at) if pending else None,
    }


def message_json(message: Message, *, raw: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "channel": message.channel,
        "channel_type": message.channel_type,
        "provider": message.provider,
        "direction": str(message.direction),
        "kind": message.kind,
        "text": message.text,
        "sent_at": iso(message.sent_at),
        "received_at": iso(message.received_at),
        "provider_message_id": message.provider_message_id,
        "status": str(message.status) if message.status else None,
        "status_at": iso(message.status_at),
        "error_code": message.error_code,
        "error_message": message.error_message,
        "attachments": [attachment_json(a) for a in message.attachments],
        "reply_to": message.reply_to,
        "updates": message.updates,
        "subject": message.subject,
        "agent": message.agent,
        "client_id": message.client_id,
        "template": message.template,
        "contact": (
            {"address": message.contact.address, "display_name": message.contact.display_name}
            if message.contact
            else None
        ),
        "extra": {k: v for k, v in message.extra.items() if k != "thread"},
    }
    if raw:
        body["raw"] = message.raw
    return body


def event_json(event: Event, now: datetime, channels: Container[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"cursor": event.cursor, "type": event.type, "at": iso(event.at)}
    if event.change is not None:
        body["change"] = event.change
    if event.moved_from is not None:
        body["moved_from"] = {"queue": event.moved_from.queue, "agent": event.moved_from.agent}
    # Both keys on every frame, null where the event has none (a state change has no
    # message): the documented frame shows them, and a reader may index them unconditionally.
    body["conversation"] = (
        conversation_json(event.conversation, now, channels)
        if event.conversation is not None
        else None
    )
    body["message"] = message_json(event.message, raw=True) if event.message is not None else None
    return body
