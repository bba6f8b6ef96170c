"""The content of one Meta `messages[]` item by its `type`: kind, text, attachments, extra.

Kept apart from the envelope walk (meta_parse.py) because this is where new message types
land: one small function per type, registered in `_BY_TYPE`. Unknown or empty types become
`unsupported` (with `declared_type` in extra) rather than errors, so a new Meta feature never
makes a customer's message disappear; so does a known type whose object cannot be read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.model import Attachment, fast_init
from plugins.whatsapp.parsed import e164

MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


@fast_init
@dataclass(frozen=True, slots=True)
class Content:
    """The type-specific part of an inbound message."""

    kind: str
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    updates: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    wakes_conversation: bool = True
    """False for kinds that change or annotate earlier messages (reaction, edit, revoke) and
    for WhatsApp's own notices (system): they are stored with the customer's conversation but
    never open a new one or count as the customer writing (DESIGN.md section 2 window rule)."""


def obj(container: dict[str, Any], key: str) -> dict[str, Any]:
    """Return `container[key]` as a dict; `{}` when absent, ValueError when of the wrong type."""
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"`{key}` is not an object")
    return value


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _text(msg: dict[str, Any]) -> Content:
    if "text" not in msg:
        raise ValueError("`text` is missing")
    body = obj(msg, "text").get("body")
    if body is not None and not isinstance(body, str | int | float):
        # An object or a list is no text: stored as `{'a': 1}` it read as Python to the agent.
        raise ValueError("`text.body` is not text")
    return Content("text", text=_str(body))


def _media(kind: str, msg: dict[str, Any]) -> Content:
    media = obj(msg, kind)
    if not media.get("id") and not media.get("url"):
        raise ValueError(f"{kind} without id or url")
    attachment = Attachment(
        kind=kind,
        url=_str(media.get("url")),
        media_id=_str(media.get("id")),
        mime_type=_str(media.get("mime_type")),
        caption=_str(media.get("caption")),
        filename=_str(media.get("filename")),
        sha256=_str(media.get("sha256")),
    )
    extra: dict[str, Any] = {}
    for flag in ("voice", "animated"):
        if flag in media:
            extra[flag] = bool(media[flag])
    return Content(kind, text=attachment.caption, attachments=(attachment,), extra=extra)


def _location(msg: dict[str, Any]) -> Content:
    loc = obj(msg, "location")
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if lat is None or lon is None:
        raise ValueError("location without latitude/longitude")
    extra = {"latitude": float(lat), "longitude": float(lon)}
    for key in ("name", "address", "url"):
        if loc.get(key):
            extra[key] = loc[key]
    return Content("location", text=location_text(extra), extra=extra)


def location_text(extra: dict[str, Any]) -> str:
    """Render a location readably for previews: `Name, Address (lat, long)`."""
    where = ", ".join(str(extra[k]) for k in ("name", "address") if extra.get(k))
    point = f"{extra['latitude']}, {extra['longitude']}"
    return f"{where} ({point})" if where else f"Location: {point}"


def _contacts(msg: dict[str, Any]) -> Content:
    cards = msg.get("contacts")
    if not isinstance(cards, list):
        raise ValueError("`contacts` is not a list")
    lines = []
    for card in cards:
        if not isinstance(card, dict):
            continue
        name = obj(card, "name").get("formatted_name") or "(no name)"
        phones = [
            str(p["phone"])
            for p in card.get("phones") or ()
            if isinstance(p, dict) and p.get("phone")
        ]
        lines.append(f"{name} ({', '.join(phones)})" if phones else str(name))
    if not lines:
        raise ValueError("no contact card is an object")
    return Content("contacts", text="; ".join(lines), extra={"contacts": cards})


def _interactive(msg: dict[str, Any]) -> Content:
    interactive = obj(msg, "interactive")
    sub = interactive.get("type")
    if not interactive or not isinstance(sub, str):
        return _unsupported(msg)
    reply = obj(interactive, sub)
    extra: dict[str, Any] = {"interactive_type": sub}
    if sub in ("button_reply", "list_reply"):
        extra["reply_id"] = reply.get("id")
        if reply.get("description"):
            extra["description"] = reply["description"]
        return Content("interactive", text=_str(reply.get("title")), extra=extra)
    if sub == "nfm_reply":
        extra["flow_name"] = reply.get("name")
        extra["flow_response"] = _json_or_text(reply.get("response_json"))
        return Content("interactive", text=_str(reply.get("body")), extra=extra)
    extra["interactive"] = interactive
    return Content("interactive", extra=extra)


def _json_or_text(value: Any) -> Any:
    """Flow answers arrive as a JSON string; keep the parsed object, or the text if not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _button(msg: dict[str, Any]) -> Content:
    button = obj(msg, "button")
    return Content(
        "button", text=_str(button.get("text")), extra={"payload": button.get("payload")}
    )


def _reaction(msg: dict[str, Any]) -> Content:
    reaction = obj(msg, "reaction")
    target = reaction.get("message_id")
    if not target:
        raise ValueError("reaction without message_id")
    emoji = str(reaction.get("emoji") or "")
    extra = {"removed": True} if not emoji else {}
    return Content(
        "reaction", text=emoji, updates=str(target), extra=extra, wakes_conversation=False
    )


def _order(msg: dict[str, Any]) -> Content:
    order = obj(msg, "order")
    items = [i for i in order.get("product_items") or () if isinstance(i, dict)]
    summary = ", ".join(
        f"{i.get('quantity', '?')} x {i.get('product_retailer_id', '?')}"
        + (f" ({i['item_price']} {i.get('currency', '')})".rstrip() if "item_price" in i else "")
        for i in items
    )
    text = order.get("text") or (f"Order: {summary}" if summary else "Order")
    return Content("order", text=str(text), extra={"order": order})


def _system(msg: dict[str, Any]) -> Content:
    system = obj(msg, "system")
    extra: dict[str, Any] = {"system_type": system.get("type")}
    if system.get("wa_id"):
        extra["new_address"] = e164(str(system["wa_id"]))
    for key in ("customer", "identity"):
        if key in system:
            extra[key] = system[key]
    # A number change is a notice from WhatsApp, not the customer writing: no window, no queue.
    return Content("system", text=_str(system.get("body")), extra=extra, wakes_conversation=False)


def _unsupported(msg: dict[str, Any]) -> Content:
    extra: dict[str, Any] = {}
    declared = msg.get("type")
    if declared != "unsupported":
        extra["declared_type"] = declared
    unsupported = msg.get("unsupported")
    if isinstance(unsupported, dict) and unsupported.get("type"):
        extra["unsupported_type"] = unsupported["type"]
    return Content("unsupported", extra=extra)


def _revoke(msg: dict[str, Any]) -> Content:
    target = obj(msg, "revoke").get("original_message_id")
    if not target:
        raise ValueError("revoke without original_message_id")
    return Content("revoke", updates=str(target), wakes_conversation=False)


def _edit(msg: dict[str, Any]) -> Content:
    edit = obj(msg, "edit")
    target = edit.get("original_message_id")
    if not target:
        raise ValueError("edit without original_message_id")
    inner_msg = obj(edit, "message")
    inner = content_of(inner_msg) if inner_msg else Content("unsupported")
    extra = {**inner.extra, "edited_kind": inner.kind}
    inner_context = inner_msg.get("context")
    if isinstance(inner_context, dict) and inner_context.get("id"):
        extra["edited_context_id"] = inner_context["id"]
    return Content(
        "edit",
        text=inner.text,
        attachments=inner.attachments,
        updates=str(target),
        extra=extra,
        wakes_conversation=False,
    )


_BY_TYPE: dict[str, Callable[[dict[str, Any]], Content]] = {
    "text": _text,
    "location": _location,
    "contacts": _contacts,
    "interactive": _interactive,
    "button": _button,
    "reaction": _reaction,
    "order": _order,
    "system": _system,
    "unsupported": _unsupported,
    "revoke": _revoke,
    "edit": _edit,
}


def content_of(msg: dict[str, Any]) -> Content:
    """Map one message object to its content. A type's own object that cannot be read (an
    image without its id, contact cards of the wrong shape) makes the message `unsupported`,
    with why in `extra["unreadable"]`: it is stored with its raw payload, like a type we do
    not know, instead of being skipped, which lost it (Meta does not send it again)."""
    kind = msg.get("type")
    try:
        if kind in MEDIA_TYPES:
            return _media(str(kind), msg)
        handler = _BY_TYPE.get(str(kind))
        if handler is None:
            return _unsupported(msg)
        return handler(msg)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        unreadable = _unsupported(msg)
        unreadable.extra["declared_type"] = kind
        unreadable.extra["unreadable"] = str(exc) or type(exc).__name__
        return unreadable
