"""Turn one raw RFC 5322 message into the gateway's normalized `InboundMessage`.

Pure: bytes in, dataclasses out, no I/O, so it runs in a worker thread and is tested on real
mail from `shared/fixtures/email`. It never raises: malformed MIME is stored as well as it can
be read, with the problem noted in `extra`.

`raw` keeps the message for audit as text decoded with **Latin-1**: every byte maps to one code
point, so it is JSON-safe and `raw.encode("latin-1")` gives back the exact bytes (UTF-8 with
surrogate escapes would not survive JSON; base64 would hide plain 7-bit mail from a reader).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime
from typing import Any

from gateway.model import (
    Attachment,
    Contact,
    DeliveryState,
    DeliveryStatus,
    InboundMessage,
    utc,
)
from plugins.email.detect import Bounce, auto_reply_reason, find_bounce
from plugins.email.headers import (
    READ_POLICY,
    UNKNOWN_SENDER,
    addresses,
    header,
    msgid_list,
    normalize_msgid,
    one_line,
    sender,
)
from plugins.email.mime import Body, PartInfo, extract, latest_reply

CHANNEL_TYPE = "email"
PROVIDER = "imap"
RAW_ENCODING = "latin-1"
DEFAULT_MAX_ATTACHMENT = 25 * 1024 * 1024
# A Date header this far ahead of our clock is a wrong clock or a lie: sent_at orders and
# shows the mail, so we do not let a sender move it into the future. (The reply window runs
# from when the mail reached us, not from its Date: see EmailConfig.policy.)
_FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """A parsed message: the normalized message and any delivery reports it carries."""

    message: InboundMessage
    statuses: tuple[DeliveryStatus, ...] = ()
    message_id: str | None = None
    replying: bool = False
    """Its headers say it answers a mail (In-Reply-To / References, or a `Re:`-like subject),
    so `message.text` had quoted history and signature cut. Parsing cannot see the store:
    the text stays cut only if the mail answers one the channel has (`deliver.store`)."""


_REPLY_SUBJECT = re.compile(r"^\s*(?:re|aw|sv|vs|antw|odp|r)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
"""A reply's subject prefix (English, German, Nordic, Dutch, Polish, Italian): a reply whose
client sent no In-Reply-To or References still gets its quoted history dropped (when the
channel already has mail of that contact: see `deliver.answers_known_mail`)."""


def parse_email(
    raw: bytes,
    channel: str,
    now: datetime,
    *,
    own_address: str | None = None,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT,
) -> ParsedEmail:
    """Parse `raw` into a `ParsedEmail` for `channel`; `now` stands in for a missing Date.

    Never raises: a message that defeats the parser entirely is still stored (kind
    `unsupported`, raw kept), because a message that cannot be stored would stop the mailbox
    cursor on it forever.
    """
    try:
        return _parse(raw, channel, now, own_address, max_attachment_bytes)
    except Exception as exc:  # last resort; the helpers below already tolerate bad input
        return _unparsable(raw, channel, now, exc)


_CONTENT_HEADERS = frozenset(
    {
        b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date",
        b"in-reply-to", b"references", b"mime-version", b"content-type",
        b"content-transfer-encoding",
    }
)  # fmt: skip
"""What a mail says, as opposed to the trace of its trip (Received, Return-Path, Delivered-To,
DKIM and spam verdicts), which every delivery of the same mail writes anew."""

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLD = re.compile(rb"\r?\n[ \t]+")
_SPACES = re.compile(rb"[ \t]+")


def content_key(raw: bytes) -> str:
    """The dedup key of a mail without a Message-ID: a digest of its content headers and
    body, not of its bytes. A mail delivered twice (a forwarding rule, a re-sent bounce, the
    same mail in two synced folders) carries different trace headers each time, so a digest
    of the raw bytes stored it twice. (Mail without Date or Message-ID repeated word for word
    is therefore one message; every real mail client and MTA sets both.)"""
    found = _HEADER_END.search(raw)
    head, body = (raw[: found.start()], raw[found.end() :]) if found else (raw, b"")
    kept, readable = [], False
    for line in _FOLD.sub(b" ", head).splitlines():
        name, colon, value = line.partition(b":")
        if not colon:  # not a header at all: part of what this mail says
            kept.append(_SPACES.sub(b" ", line.strip()))
        elif name.strip().lower() in _CONTENT_HEADERS:
            kept.append(name.strip().lower() + b":" + _SPACES.sub(b" ", value.strip()))
            readable = True
    if not readable:  # no content header: not a mail we can read, so its bytes are the key
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    kept.append(b"\n" + body.replace(b"\r\n", b"\n").rstrip())
    return "sha256:" + hashlib.sha256(b"\n".join(kept)).hexdigest()


def _nobody(key: str) -> str:
    """The contact of a mail without a usable sender: one of its own (`.invalid` never
    resolves), so unrelated senders are not merged into one thread someone might answer."""
    return f"unknown-{hashlib.sha256(key.encode()).hexdigest()[:16]}@invalid"


def _unparsable(raw: bytes, channel: str, now: datetime, exc: Exception) -> ParsedEmail:
    """A mail the parser gave up on (a MIME tree thousands of levels deep, say): its headers
    alone are read again, so a real sender is still a contact an agent sees and can answer.
    Without one, it is kept for the record in a closed conversation, waking nobody."""
    key = content_key(raw)
    address, display_name, subject, message_id = _nobody(key), None, None, None
    try:
        head = BytesHeaderParser(policy=READ_POLICY).parsebytes(raw)
        found, name = sender(head, None)
        if found != UNKNOWN_SENDER:
            address, display_name = found, name
        subject = one_line(header(head, "Subject"))
        message_id = normalize_msgid(header(head, "Message-ID"))
    except Exception:  # the headers too: nothing more to learn from it
        pass
    message = InboundMessage(
        channel=channel,
        channel_type=CHANNEL_TYPE,
        provider=PROVIDER,
        provider_message_id=message_id or key,
        contact=Contact(address=address, display_name=display_name),
        sent_at=utc(now),
        kind="unsupported",
        subject=subject,
        raw=raw.decode(RAW_ENCODING),
        wakes_conversation=not address.endswith("@invalid"),
        extra={"raw_encoding": RAW_ENCODING, "parse_error": type(exc).__name__},
    )
    return ParsedEmail(message=message)


def _parse(
    raw: bytes,
    channel: str,
    now: datetime,
    own_address: str | None,
    max_attachment_bytes: int,
) -> ParsedEmail:
    msg = BytesParser(policy=READ_POLICY).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    extra: dict[str, Any] = {"raw_encoding": RAW_ENCODING}
    try:
        body = extract(msg, max_attachment_bytes)
    except Exception as exc:  # a MIME tree the stdlib cannot walk: keep headers and raw
        body = Body(text="")
        extra["parse_error"] = type(exc).__name__
    message_id = normalize_msgid(header(msg, "Message-ID"))
    in_reply_to = msgid_list(header(msg, "In-Reply-To"))
    references = msgid_list(header(msg, "References"))
    address, display_name = sender(msg, own_address)
    subject = one_line(header(msg, "Subject"))
    sent_at = _sent_at(msg, now, extra)

    kind = "email"
    wakes = True
    statuses: tuple[DeliveryStatus, ...] = ()
    thread = list(dict.fromkeys([*references, *in_reply_to]))
    bounce = _safe_bounce(msg, body.text)
    auto = auto_reply_reason(msg)
    if own_address and address == own_address.lower():
        auto = auto or "own-address"
    if bounce is not None:
        kind, wakes = "bounce", False
        extra["bounce"] = _bounce_extra(bounce)
        thread = list(dict.fromkeys([*thread, *bounce.original_ids]))
        statuses = _statuses(bounce, channel, sent_at)
    elif auto is not None:
        kind, wakes = "auto_reply", False
        extra["auto_reply"] = auto
    key = message_id or content_key(raw)
    if address == UNKNOWN_SENDER:
        # Nobody to answer: kept for the record in a closed conversation of its own.
        address, wakes = _nobody(key), False
        extra["no_sender"] = True

    # Quoted history and signatures are dropped from replies only: in a first mail the same
    # heuristics cut real text (a line "On Monday my colleague wrote:", a "--" before the
    # amount in question). The whole text stays in `extra.full_text` either way, and
    # `deliver.store` puts it back as the text when the mail answers none the channel has.
    replying = kind == "email" and (
        bool(in_reply_to or references) or bool(_REPLY_SUBJECT.match(subject or ""))
    )
    text = latest_reply(body.text) if replying else body.text
    extra.update(
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        to=[a for _n, a in addresses(msg, "To")],
        cc=[a for _n, a in addresses(msg, "Cc")],
        full_text=_bounded(body.text, "full_text", extra),
    )
    text = _bounded(text, "text", extra)
    if body.html is not None:
        extra["html"] = _bounded(body.html, "html", extra)
    oversize = [p.path for p in body.attachments if p.oversize]
    if oversize:
        extra["oversize_attachments"] = oversize
    defects = _defects(msg)
    if defects:
        extra["defects"] = defects

    inbound = InboundMessage(
        channel=channel,
        channel_type=CHANNEL_TYPE,
        provider=PROVIDER,
        provider_message_id=key,
        contact=Contact(address=address, display_name=display_name),
        sent_at=sent_at,
        kind=kind,
        text=text or None,
        attachments=tuple(_attachment(p) for p in body.attachments),
        reply_to=in_reply_to[0] if in_reply_to else None,
        thread_refs=tuple(thread),
        subject=subject,
        wakes_conversation=wakes,
        raw=_raw_text(raw, msg, oversize, extra),
        extra=extra,
    )
    return ParsedEmail(message=inbound, statuses=statuses, message_id=message_id, replying=replying)


MAX_TEXT_CHARS = 1_000_000
"""The most of a mail's text, full text or HTML kept on the message (each): a 20 MB mail body
would otherwise travel whole in every event and live agent frame. The raw mail is kept whole
(its attachments are read from it); what was cut is listed in `extra["truncated"]`."""


def _bounded(value: str, name: str, extra: dict[str, Any]) -> str:
    if len(value) <= MAX_TEXT_CHARS:
        return value
    extra.setdefault("truncated", []).append(name)
    return value[:MAX_TEXT_CHARS]


def _defects(msg: EmailMessage) -> list[str]:
    """The class names of what the parser found wrong, in the message and in its parts (a
    nested multipart without a boundary is noted on that part only)."""
    try:
        found = {type(d).__name__ for part in msg.walk() for d in part.defects}
    except Exception:  # a tree too deep to walk: the message's own defects
        found = {type(d).__name__ for d in msg.defects}
    return sorted(found)


def _sent_at(msg: EmailMessage, now: datetime, extra: dict[str, Any]) -> datetime:
    value = header(msg, "Date")
    when: datetime | None = None
    if value:
        try:
            when = utc(parsedate_to_datetime(value))
        except (TypeError, ValueError, IndexError, OverflowError):
            extra["date_header"] = value
    if when is None:
        return utc(now)
    if when > utc(now) + _FUTURE_TOLERANCE:
        extra["date_header"] = value
        return utc(now)
    return when


def _safe_bounce(msg: EmailMessage, text: str) -> Bounce | None:
    try:
        return find_bounce(msg, text)
    except Exception:  # a report too broken to read is still mail: store it, do not crash
        return None


def _bounce_extra(bounce: Bounce) -> dict[str, Any]:
    return {
        "original_message_ids": list(bounce.original_ids),
        "failed": bounce.failed,
        "action": bounce.action,
        "status": bounce.status,
        "diagnostic": bounce.diagnostic,
        "recipient": bounce.recipient,
        "verp_recipient": bounce.verp,
    }


def _statuses(bounce: Bounce, channel: str, at: datetime) -> tuple[DeliveryStatus, ...]:
    if not bounce.failed or not bounce.original_ids:
        return ()
    return (
        DeliveryStatus(
            channel=channel,
            provider_message_id=bounce.original_ids[0],
            status=DeliveryState.FAILED,
            at=at,
            error_code=bounce.status,
            error_message=bounce.diagnostic,
            raw=_bounce_extra(bounce),
        ),
    )


def _attachment(part: PartInfo) -> Attachment:
    major = part.mime_type.split("/")[0]
    kind = major if major in {"image", "audio", "video"} else "document"
    return Attachment(
        kind=kind,
        media_id=None if part.oversize else f"part:{part.path}",
        mime_type=part.mime_type,
        filename=part.filename,
        size=part.size,
        sha256=part.sha256,
    )


def _raw_text(raw: bytes, msg: EmailMessage, oversize: list[str], extra: dict[str, Any]) -> str:
    """Return the raw message as Latin-1 text, without the content of oversize attachments."""
    if not oversize:
        return raw.decode(RAW_ENCODING)
    extra["raw_modified"] = "oversize attachment content removed"
    try:
        for path in oversize:
            part: Any = msg
            for index in path.split("."):
                part = part.get_payload()[int(index) - 1]
            part.set_payload("")
        return msg.as_bytes(policy=policy.compat32).decode(RAW_ENCODING)
    except Exception:  # cannot re-serialize: keep the header block only
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        extra["raw_modified"] = "body removed (oversize attachment, unserializable MIME)"
        return head.decode(RAW_ENCODING)
