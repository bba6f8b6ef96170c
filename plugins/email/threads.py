"""Remember, per customer address, the last mail they sent, so a reply can thread on it.

The core passes the conversation's ids in `message.extra["thread"]`; `send` adds the answered
mail's own References from this memory (they reach back past a closed conversation), and when
the core passes nothing, falls back to it entirely: the newest customer mail from that address
on this channel, which is the one the open conversation is answering.
"""

from __future__ import annotations

from datetime import datetime

import orjson

from gateway.channels import KeyValue
from gateway.model import parse_iso
from plugins.email.compose import Thread
from plugins.email.parse import ParsedEmail


def thread_key(channel: str, address: str) -> str:
    return f"email:{channel}:thread:{address.lower()}"


async def remember(kv: KeyValue, parsed: ParsedEmail) -> None:
    """Store `parsed` as the address's latest mail, unless a newer one is already stored."""
    message = parsed.message
    if message.kind != "email" or parsed.message_id is None:
        return
    key = thread_key(message.channel, message.contact.address)
    current = await _load(kv, key)
    if current is not None and current[1] is not None and current[1] > message.sent_at:
        return
    refs = [*message.extra.get("references", []), *message.extra.get("in_reply_to", [])]
    data = {
        "message_id": parsed.message_id,
        "references": list(dict.fromkeys(refs)),
        "subject": message.subject,
        "sent_at": message.sent_at.isoformat(),
    }
    await kv.kv_set(key, orjson.dumps(data).decode())


async def recall(kv: KeyValue, channel: str, address: str) -> Thread | None:
    """Return the thread of the address's latest mail, or None."""
    found = await _load(kv, thread_key(channel, address))
    return found[0] if found else None


async def _load(kv: KeyValue, key: str) -> tuple[Thread, datetime | None] | None:
    blob = await kv.kv_get(key)
    if not blob:
        return None
    try:
        data = orjson.loads(blob)
        thread = Thread(
            in_reply_to=data["message_id"],
            references=tuple(data.get("references") or ()),
            subject=data.get("subject"),
        )
        return thread, parse_iso(data.get("sent_at"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
