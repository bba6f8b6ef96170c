"""Meta WhatsApp Cloud API webhook payloads -> normalized messages, statuses and errors.

Walks every `entry[].changes[].value` (PROTOCOLS.md 2.3): a POST may batch many messages and
statuses, so each item is parsed on its own and a broken one only adds an `ItemProblem`. Only
an unreadable envelope (not JSON, no `entry` list) raises `MalformedPayload`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from gateway.model import Contact, DeliveryState, DeliveryStatus, InboundMessage
from plugins.whatsapp.meta_content import Content, content_of, obj
from plugins.whatsapp.parsed import (
    ItemProblem,
    MalformedPayload,
    ParseResult,
    ProviderError,
    e164,
    from_unix,
)

PROVIDER = "cloud_api"
WINDOW_CLOSED_CODE = "131047"

STATUS_MAP = {
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.READ,
    # `played` = a voice message was listened to, which implies it was read.
    "played": DeliveryState.READ,
    "failed": DeliveryState.FAILED,
}


def parse_meta_body(
    body: bytes,
    *,
    channel: str,
    now: datetime,
    phone_number_id: str | None = None,
    siblings: Callable[[str], str | None] | None = None,
) -> ParseResult:
    """Parse a raw webhook body (already signature-checked) into a `ParseResult`."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        payload = _with_lone_surrogates(body)
        if payload is None:
            raise MalformedPayload(f"body is not JSON: {exc}") from None
    return parse_meta_payload(
        payload, channel=channel, now=now, phone_number_id=phone_number_id, siblings=siblings
    )


def _with_lone_surrogates(body: bytes) -> Any:
    """JSON that orjson refuses only for a lone UTF-16 surrogate escape (`"\\ud83d"`: half an
    emoji, cut by a client), read by the stdlib instead, each such half replaced by U+FFFD.
    Refusing it would refuse the whole batch, every message in it, at every re-delivery.
    None when the body is not JSON at all."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _mend(payload)


def _mend(value: Any) -> Any:
    if isinstance(value, str):
        # A lone surrogate cannot be encoded; a well-formed string comes back unchanged.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_mend(item) for item in value]
    if isinstance(value, dict):
        return {_mend(key): _mend(item) for key, item in value.items()}
    return value


def parse_meta_payload(
    payload: Any,
    *,
    channel: str,
    now: datetime,
    phone_number_id: str | None = None,
    siblings: Callable[[str], str | None] | None = None,
) -> ParseResult:
    """Parse a decoded webhook payload.

    With `phone_number_id` set, changes addressed to another business number belong to the
    channel `siblings` names for that number (another number of the same Meta app, whose
    webhooks come to one URL: see `numbers`), or are skipped (as problems) when it names none:
    a reply to them from this channel would come from the wrong number. It is asked only for
    such changes, which are rare.
    """
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    result = ParseResult()
    if payload.get("object") != "whatsapp_business_account":
        result.problems.append(
            ItemProblem("object", f"not a WhatsApp payload: {payload.get('object')!r}")
        )
        return result
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("`entry` is not a list")
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            result.problems.append(ItemProblem(f"entry[{i}]", "no `changes` list"))
            continue
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                result.problems.append(ItemProblem(where, "no `value` object"))
                continue
            if change.get("field", "messages") != "messages":
                result.problems.append(ItemProblem(where, f"field {change.get('field')!r} ignored"))
                continue
            try:
                _value(change["value"], where, result, channel, now, phone_number_id, siblings)
            except ValueError as exc:
                result.problems.append(ItemProblem(where, str(exc)))
    return result


def _value(
    value: dict[str, Any],
    where: str,
    result: ParseResult,
    channel: str,
    now: datetime,
    phone_number_id: str | None,
    siblings: Callable[[str], str | None] | None = None,
) -> None:
    metadata = obj(value, "metadata")
    target = metadata.get("phone_number_id")
    if phone_number_id is not None and target is not None and str(target) != phone_number_id:
        sibling = siblings(str(target)) if siblings is not None else None
        if sibling is None:
            result.problems.append(ItemProblem(where, f"addressed to phone_number_id {target}"))
            return
        channel = sibling
    errors = [_provider_error(e) for e in _list(value, "errors") if isinstance(e, dict)]
    result.errors.extend(errors)
    contacts = [c for c in _list(value, "contacts") if isinstance(c, dict)]
    for k, item in enumerate(_list(value, "messages")):
        try:
            result.messages.append(_message(item, contacts, metadata, errors, channel, now))
        except (ValueError, TypeError, KeyError) as exc:
            result.problems.append(ItemProblem(f"{where}.messages[{k}]", str(exc)))
    for k, item in enumerate(_list(value, "statuses")):
        try:
            result.statuses.append(_status(item, channel, now))
        except (ValueError, TypeError, KeyError) as exc:
            result.problems.append(ItemProblem(f"{where}.statuses[{k}]", str(exc)))


def _list(container: dict[str, Any], key: str) -> list[Any]:
    value = container.get(key)
    return value if isinstance(value, list) else []


def _provider_error(error: dict[str, Any]) -> ProviderError:
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    title = error.get("title") or error.get("message") or ""
    return ProviderError(code=str(error.get("code")), title=str(title), details=details, raw=error)


def _find_contact(
    contacts: list[dict[str, Any]], phone: str | None, user_id: str | None
) -> dict[str, Any]:
    """Find the `contacts[]` entry of a sender; a lone entry is the sender's by construction."""
    for contact in contacts:
        if phone and str(contact.get("wa_id")) == phone:
            return contact
        if user_id and contact.get("user_id") == user_id:
            return contact
    return contacts[0] if len(contacts) == 1 else {}


def _message(
    msg: Any,
    contacts: list[dict[str, Any]],
    metadata: dict[str, Any],
    value_errors: list[ProviderError],
    channel: str,
    now: datetime,
) -> InboundMessage:
    if not isinstance(msg, dict):
        raise ValueError("message is not an object")
    message_id = msg.get("id")
    if not message_id:
        raise ValueError("message without id")
    phone = _identifier(msg, "from")
    user_id = _identifier(msg, "from_user_id")
    contact = _find_contact(contacts, phone, user_id)
    address = _address(phone, user_id, contact)
    # A broken `contacts[]` entry costs the display name, not the message: the sender is
    # known from the message's own `from`.
    profile = contact.get("profile")
    if not isinstance(profile, dict):
        profile = {}
    content = content_of(msg)
    extra = {**content.extra, **_identity(contact, msg, profile)}
    if msg.get("errors"):
        extra["errors"] = msg["errors"]
    elif content.kind == "unsupported" and value_errors:
        extra["errors"] = [e.raw for e in value_errors]
    reply_to = _context(msg, extra)
    if isinstance(msg.get("referral"), dict):
        extra["referral"] = msg["referral"]
    if metadata.get("phone_number_id"):
        extra["phone_number_id"] = str(metadata["phone_number_id"])
    return _inbound(content, msg, str(message_id), address, profile, reply_to, extra, channel, now)


def _inbound(
    content: Content,
    msg: dict[str, Any],
    message_id: str,
    address: str,
    profile: dict[str, Any],
    reply_to: str | None,
    extra: dict[str, Any],
    channel: str,
    now: datetime,
) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        channel_type="whatsapp",
        provider=PROVIDER,
        provider_message_id=message_id,
        contact=Contact(address=address, display_name=_display_name(profile)),
        sent_at=from_unix(msg.get("timestamp"), now),
        kind=content.kind,
        text=content.text,
        attachments=content.attachments,
        reply_to=reply_to,
        updates=content.updates,
        wakes_conversation=content.wakes_conversation,
        raw=msg,
        extra=extra,
    )


def _address(phone: str | None, user_id: str | None, contact: dict[str, Any]) -> str:
    """E.164 when a phone exists, else the BSUID (`US.1234`): DESIGN.md section 6."""
    if phone:
        return e164(phone)
    if user_id:
        return user_id
    if contact.get("wa_id"):
        return e164(str(contact["wa_id"]))
    if contact.get("user_id"):
        return str(contact["user_id"])
    raise ValueError("message without sender (`from` / `from_user_id`)")


def _identifier(msg: dict[str, Any], key: str) -> str | None:
    """A sender id (`from`, `from_user_id`): text (a number is taken as its digits); anything
    else makes the item malformed rather than an address like "{'x': 1}"."""
    value = msg.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"`{key}` is not a string")
    return value


def _display_name(profile: dict[str, Any]) -> str | None:
    name = profile.get("name")
    return name if isinstance(name, str) and name else None


def _identity(
    contact: dict[str, Any], msg: dict[str, Any], profile: dict[str, Any]
) -> dict[str, Any]:
    """Keep the BSUID-era identifiers so contacts can be matched when the phone is missing."""
    extra: dict[str, Any] = {}
    user_id = msg.get("from_user_id") or contact.get("user_id")
    parent = msg.get("from_parent_user_id") or contact.get("parent_user_id")
    if user_id:
        extra["user_id"] = user_id
    if parent:
        extra["parent_user_id"] = parent
    if profile.get("username"):
        extra["username"] = profile["username"]
    return extra


def _context(msg: dict[str, Any], extra: dict[str, Any]) -> str | None:
    """Return the quoted message id and record forwarding/product context in `extra`.

    The context only says what a message answers: a broken one costs that, not the message
    (kept, with the problem noted in `extra`)."""
    try:
        context = obj(msg, "context")
    except ValueError as exc:
        extra["context_error"] = str(exc)
        return None
    for flag in ("forwarded", "frequently_forwarded"):
        if context.get(flag):
            extra[flag] = True
    if context.get("referred_product"):
        extra["referred_product"] = context["referred_product"]
    if context.get("from"):
        extra["quoted_from"] = str(context["from"])
    quoted = context.get("id")
    return str(quoted) if quoted else None


def _status(item: Any, channel: str, now: datetime) -> DeliveryStatus:
    if not isinstance(item, dict):
        raise ValueError("status is not an object")
    message_id = item.get("id")
    state = STATUS_MAP.get(str(item.get("status")))
    if not message_id:
        raise ValueError("status without id")
    if state is None:
        raise ValueError(f"unknown status {item.get('status')!r}")
    errors = [e for e in _list(item, "errors") if isinstance(e, dict)]
    code: str | None = None
    message: str | None = None
    if errors:
        error = _provider_error(errors[0])
        code = error.code
        message = f"{error.title}: {error.details}" if error.details else error.title or None
    return DeliveryStatus(
        channel=channel,
        provider_message_id=str(message_id),
        status=state,
        at=from_unix(item.get("timestamp"), now),
        error_code=code,
        error_message=message,
        closes_window=code == WINDOW_CLOSED_CODE,
        raw=item,
        # What our send put in `biz_opaque_callback_data`: our message id (see `numbers`).
        message_id=_callback_data(item),
    )


def _callback_data(item: dict[str, Any]) -> str | None:
    value = item.get("biz_opaque_callback_data")
    return value if isinstance(value, str) and value else None
