"""Twilio webhook form bodies -> normalized messages or delivery statuses.

The same URL receives inbound messages and the status callbacks of our own sends (we set
`StatusCallback` to it), so one function tells them apart: a request with a `MessageStatus`
other than `received` is a delivery report. Twilio adds parameters without notice
(PROTOCOLS.md 1.1), so unknown ones are kept in `raw` and never rejected.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson

from gateway.model import Attachment, Contact, DeliveryState, DeliveryStatus, InboundMessage
from plugins.whatsapp.meta_content import location_text
from plugins.whatsapp.parsed import ItemProblem, MalformedPayload, ParseResult, e164

PROVIDER = "twilio"
WINDOW_CLOSED_CODE = "63016"
WHATSAPP_PREFIX = "whatsapp:"
SENDER = re.compile(r"\+[0-9]{1,20}|[A-Za-z]{2}\.[0-9A-Za-z_.-]{1,100}")
"""A sender Twilio can name: a phone number (E.164, or a short code) or a WhatsApp user id
(BSUID, `US.1234`)."""
SID = re.compile(r"[A-Za-z0-9_-]{2,64}")
"""A Twilio resource id: two letters and hex digits (`SM` + 32); kept loose (fixtures use
`SMxx`) but never with spaces, newlines or control characters, which end up in logs and URLs,
nor thousands of characters."""
MAX_MEDIA = 10

STATUS_MAP = {
    "accepted": DeliveryState.QUEUED,
    "scheduled": DeliveryState.QUEUED,
    "queued": DeliveryState.QUEUED,
    "sending": DeliveryState.QUEUED,
    "sent": DeliveryState.SENT,
    "delivered": DeliveryState.DELIVERED,
    "partially_delivered": DeliveryState.DELIVERED,
    "read": DeliveryState.READ,
    "undelivered": DeliveryState.FAILED,
    "failed": DeliveryState.FAILED,
    "canceled": DeliveryState.FAILED,
}

# Readable reasons for the codes agents meet most (PROTOCOLS.md 1.2) when Twilio sends none.
ERROR_TEXT = {
    "63016": "Outside the WhatsApp reply window: send an approved template instead",
    "63018": "WhatsApp rate limit reached",
    "21610": "The recipient unsubscribed (replied STOP)",
    "30008": "Unknown delivery error",
}

KNOWN_KINDS = frozenset(
    {
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "unsupported",
    }
)


def form_params(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group decoded form pairs by name, keeping every value (Twilio signs them all)."""
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def parse_twilio_form(params: dict[str, list[str]], *, channel: str, now: datetime) -> ParseResult:
    """Parse one Twilio webhook (inbound message or status callback) into a `ParseResult`.

    Twilio's inbound webhook carries no timestamp, so `now` (the receive time) is `sent_at`.
    """
    flat = {name: values[0] for name, values in params.items() if values}
    raw: dict[str, Any] = {n: v[0] if len(v) == 1 else list(v) for n, v in params.items()}
    result = ParseResult()
    status = flat.get("MessageStatus") or ""
    if status and status != "received":
        state = STATUS_MAP.get(status)
        sid = flat.get("MessageSid") or flat.get("SmsSid")
        if not sid:
            raise MalformedPayload("status callback without MessageSid")
        _require_sid(sid)
        if state is None:
            result.problems.append(ItemProblem("MessageStatus", f"unknown status {status!r}"))
            return result
        result.statuses.append(_status(sid, state, flat, raw, channel, now))
        return result
    result.messages.append(_message(flat, raw, channel, now))
    return result


def _status(
    sid: str,
    state: DeliveryState,
    flat: dict[str, str],
    raw: dict[str, Any],
    channel: str,
    now: datetime,
) -> DeliveryStatus:
    code = flat.get("ErrorCode") or None
    message = flat.get("ErrorMessage") or (ERROR_TEXT.get(code) if code else None)
    return DeliveryStatus(
        channel=channel,
        provider_message_id=sid,
        status=state,
        at=now,
        error_code=code,
        error_message=message,
        closes_window=code == WINDOW_CLOSED_CODE,
        raw=raw,
    )


def _require_sid(sid: str) -> None:
    if not SID.fullmatch(sid):
        raise MalformedPayload("MessageSid is not a Twilio id (up to 64 letters and digits)")


def strip_channel(address: str) -> str:
    """`whatsapp:+1415...` -> `+1415...`; `whatsapp:US.1234` -> `US.1234` (a BSUID)."""
    if address.lower().startswith(WHATSAPP_PREFIX):
        address = address[len(WHATSAPP_PREFIX) :]
    return e164(address)


def _message(
    flat: dict[str, str], raw: dict[str, Any], channel: str, now: datetime
) -> InboundMessage:
    sid = flat.get("MessageSid") or flat.get("SmsMessageSid") or flat.get("SmsSid")
    if not sid:
        raise MalformedPayload("message without MessageSid")
    _require_sid(sid)
    # `whatsapp:` with nothing after it is no sender either: every such message would share
    # one contact with the empty address, and answers to it would go nowhere.
    sender = strip_channel(flat.get("From") or "").strip()
    if not sender:
        raise MalformedPayload("message without a sender (From)")
    if not SENDER.fullmatch(sender):
        # Replies would go to it (`To=whatsapp:...`): junk here is junk sent to Twilio later.
        raise MalformedPayload("From is neither a phone number nor a WhatsApp user id")
    attachments = _attachments(flat)
    extra = _extra(flat)
    kind, text = _kind_and_text(flat, attachments, extra)
    return InboundMessage(
        channel=channel,
        channel_type="whatsapp",
        provider=PROVIDER,
        provider_message_id=sid,
        contact=Contact(address=sender, display_name=flat.get("ProfileName") or None),
        sent_at=now,
        kind=kind,
        text=text,
        attachments=attachments,
        reply_to=flat.get("OriginalRepliedMessageSid") or None,
        raw=raw,
        extra=extra,
    )


def _media_kind(mime_type: str | None, url: str) -> str:
    guessed = mime_type or mimetypes.guess_type(url.split("?", 1)[0])[0] or ""
    major = guessed.split("/", 1)[0]
    if guessed == "image/webp" and mime_type is not None:
        return "sticker"
    if major in ("image", "audio", "video"):
        return major
    return "document"


def _attachments(flat: dict[str, str]) -> tuple[Attachment, ...]:
    """`MediaUrl{N}`/`MediaContentType{N}`; the type may be missing (courier's fixture)."""
    found = []
    for n in range(MAX_MEDIA):
        url = flat.get(f"MediaUrl{n}")
        if not url:
            continue
        mime_type = flat.get(f"MediaContentType{n}") or None
        found.append(Attachment(kind=_media_kind(mime_type, url), url=url, mime_type=mime_type))
    return tuple(found)


def _kind_and_text(
    flat: dict[str, str], attachments: tuple[Attachment, ...], extra: dict[str, Any]
) -> tuple[str, str | None]:
    body = flat.get("Body") or None
    declared = (flat.get("MessageType") or "").lower()
    if "latitude" in extra:
        return "location", body or location_text(extra)
    if flat.get("ButtonText") or flat.get("ButtonPayload"):
        if body and body != flat.get("ButtonText"):
            extra["body"] = body
        kind = "interactive" if declared == "interactive" else "button"
        return kind, flat.get("ButtonText") or body
    if declared in KNOWN_KINDS and declared != "text":
        return declared, body
    if attachments and not body:
        return attachments[0].kind, None
    if attachments:
        return attachments[0].kind, body
    return "text", body


def _extra(flat: dict[str, str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    sender = flat.get("From", "")
    if sender.lower().startswith(WHATSAPP_PREFIX):
        extra["channel_prefix"] = "whatsapp"
    if flat.get("ExternalUserId"):
        extra["user_id"] = strip_channel(flat["ExternalUserId"])
    if flat.get("WaId"):
        extra["wa_id"] = flat["WaId"]
    _location(flat, extra)
    if flat.get("ButtonPayload"):
        extra["payload"] = flat["ButtonPayload"]
    for flag, key in (("Forwarded", "forwarded"), ("FrequentlyForwarded", "frequently_forwarded")):
        if flat.get(flag, "").lower() == "true":
            extra[key] = True
    if flat.get("OriginalRepliedMessageSender"):
        extra["quoted_from"] = strip_channel(flat["OriginalRepliedMessageSender"])
    referral = {
        key[len("Referral") :]: value
        for key, value in flat.items()
        if key.startswith("Referral") and key != "ReferralNumMedia" and value
    }
    if referral:
        extra["referral"] = referral
    if flat.get("ChannelMetadata"):
        extra["channel_metadata"] = _json_or_text(flat["ChannelMetadata"])
    return extra


def _location(flat: dict[str, str], extra: dict[str, Any]) -> None:
    lat, lon = flat.get("Latitude"), flat.get("Longitude")
    if not lat or not lon:
        return
    try:
        extra["latitude"], extra["longitude"] = float(lat), float(lon)
    except ValueError:
        return
    if flat.get("Label"):
        extra["name"] = flat["Label"]
    if flat.get("Address"):
        extra["address"] = flat["Address"]


def _json_or_text(value: str) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
