"""Recognizing mail that no human wrote: auto-replies and delivery failures (bounces).

Auto-replies must not wake a conversation (or we answer robots and risk mail loops, RFC 3834).
Bounces tell us that one of *our* replies failed: we find which one (the original Message-ID
quoted in the report) and why (the DSN status code and diagnostic, RFC 3464).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import HeaderParser

from plugins.email.headers import READ_POLICY, addresses, header, msgid_list, one_line
from plugins.email.mime import part_bytes, part_text

_AUTO_SUBJECT = re.compile(
    r"^\s*(?:[\[(]\s*)?(?:"
    r"auto(?:matic|matische|matisch)?[ _-]?(?:reply|response|respond|antwort|answer)"
    r"|out of (?:the )?office|ooo\b|on vacation|vacation (?:reply|notice|message|response)"
    r"|abwesenheit|absence|fuera de la oficina|respuesta autom[aá]tica|resposta autom[aá]tica"
    r"|r[ée]ponse automatique|risposta automatica|automatisch antwoord|autosvar"
    r")",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery (?:has )?fail|failure notice"
    r"|returned mail|mail delivery failed|delivery notification|non[- ]?delivery"
    r"|(?:not|n't) (?:be )?delivered",
    re.IGNORECASE,
)
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_TEXT_MSGID = re.compile(r"^[ \t]*message-id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_VERP = re.compile(r"^[^+@\s]+\+(?P<tag>[^@\s]+)@")
_VERP_RCPT = re.compile(r"(?<![^-=+])(?P<local>[^-=+]+)=(?P<domain>[^=]+\.[^=]+)$")


def auto_reply_reason(msg: Message) -> str | None:
    """Say why `msg` is an automatic reply (RFC 3834 and common vendor headers), or None."""
    submitted = (header(msg, "Auto-Submitted") or "").strip().lower()
    if submitted and submitted.split(";")[0].strip() != "no":
        return f"auto-submitted: {submitted.split(';')[0].strip()}"
    autoreply = (header(msg, "X-Autoreply") or "").strip().lower()
    if autoreply and autoreply != "no":
        return "x-autoreply"
    if header(msg, "X-Autorespond") is not None:
        return "x-autorespond"
    precedence = (header(msg, "Precedence") or "").strip().lower()
    if precedence in {"bulk", "junk", "auto_reply"}:
        return f"precedence: {precedence}"
    # A subject alone is weak evidence: "Out of office hours: can I call you?" is a customer.
    # It counts on a reply only, as every auto-reply is (RFC 3834 3.1.5: In-Reply-To and
    # References name what it answers); a customer's first mail is never hidden by its words.
    subject = one_line(header(msg, "Subject")) or ""
    replying = header(msg, "In-Reply-To") is not None or header(msg, "References") is not None
    if replying and _AUTO_SUBJECT.search(subject):
        return "subject"
    return None


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a delivery report says about one of our messages."""

    original_ids: tuple[str, ...]
    failed: bool
    action: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    recipient: str | None = None
    verp: str | None = None


def find_bounce(msg: EmailMessage, text: str) -> Bounce | None:
    """Return the bounce `msg` reports (DSN or a recognizable non-standard one), else None.

    `text` is the message's readable body, searched when the report's machine-readable part
    is empty or missing (Gmail sends an empty `message/delivery-status`).
    """
    ctype = msg.get_content_type()
    dsn_part = _delivery_status_part(msg)
    is_report = ctype == "multipart/report" and (
        str(msg.get_param("report-type") or "").lower() == "delivery-status" or dsn_part is not None
    )
    if not is_report and not _looks_like_bounce(msg):
        return None
    fields = _recipient_fields(dsn_part) if dsn_part is not None else {}
    action = (fields.get("action") or "").lower() or None
    status_field = fields.get("status") or ""
    status_match = _STATUS.search(status_field)
    status = status_match.group(1) if status_match else None
    diagnostic = _diagnostic(fields.get("diagnostic-code"))
    if diagnostic is None and status_match:
        diagnostic = one_line(status_field[status_match.end() :].strip(" ()")) or None
    if status is None:
        status, from_text = _status_from_text(text)
        diagnostic = diagnostic or from_text
    recipient = _final_recipient(fields.get("final-recipient")) or _failed_header(msg)
    verp = _verp_recipient(msg)
    recipient = recipient or verp
    failed = action == "failed" or (action is None and (status or "5").startswith("5"))
    if action in {"delayed", "delivered", "relayed", "expanded"}:
        failed = False
    return Bounce(
        original_ids=tuple(_original_ids(msg, text)),
        failed=failed,
        action=action,
        status=status,
        diagnostic=diagnostic,
        recipient=recipient,
        verp=verp,
    )


def _looks_like_bounce(msg: Message) -> bool:
    """A bounce that is not a DSN report: a delivery-failure subject from a mail system (its
    sender, an X-Failed-Recipients header, or the null return path every bounce carries,
    RFC 5321 4.5.5), or any mail from MAILER-DAEMON/postmaster with that null return path."""
    subject = one_line(header(msg, "Subject")) or ""
    from_addr = next(iter(addresses(msg, "From")), ("", ""))[1]
    from_robot = from_addr.split("@")[0].lower() in _BOUNCE_SENDERS
    failed_header = header(msg, "X-Failed-Recipients") is not None
    null_path = (header(msg, "Return-Path") or "").strip() == "<>"
    said = bool(_BOUNCE_SUBJECT.search(subject))
    return (said and (from_robot or failed_header or null_path)) or (from_robot and null_path)


def _delivery_status_part(msg: EmailMessage) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            return part
    return None


def _recipient_fields(part: Message) -> dict[str, str]:
    """Return the fields of the first failed per-recipient block (else the first block)."""
    blocks = _dsn_blocks(part)
    per_recipient = [b for b in blocks if "action" in b or "status" in b]
    for block in per_recipient:
        if block.get("action", "").lower() == "failed":
            return block
    return per_recipient[0] if per_recipient else {}


def _dsn_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                blocks.append({k.lower(): one_line(str(v)) or "" for k, v in block.items()})
    else:  # some servers' reports do not parse into blocks: read it as text
        raw = part_bytes(part).decode("utf-8", "replace")
        for chunk in re.split(r"\n\s*\n", raw.replace("\r\n", "\n")):
            parsed = HeaderParser(policy=policy.compat32).parsestr(chunk)
            blocks.append({k.lower(): one_line(str(v)) or "" for k, v in parsed.items()})
    return blocks


def _diagnostic(value: str | None) -> str | None:
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    return one_line(rest if sep and " " not in kind.strip() else value)


def _status_from_text(text: str) -> tuple[str | None, str | None]:
    for paragraph in re.split(r"\n\s*\n", text):
        match = _STATUS.search(paragraph)
        if match and match.group(1)[0] in "45":
            line = one_line(paragraph) or ""
            return match.group(1), line[:500]
    return None, None


def _final_recipient(value: str | None) -> str | None:
    if not value:
        return None
    address = value.partition(";")[2] or value
    address = address.strip().strip("<>").lower()
    return address if "@" in address else None


def _failed_header(msg: Message) -> str | None:
    value = header(msg, "X-Failed-Recipients")
    if not value:
        return None
    first = value.split(",")[0].strip().lower()
    return first if "@" in first else None


def _verp_recipient(msg: Message) -> str | None:
    """Decode a VERP return path (`bounce+tag-user=domain@ours`) into `user@domain`."""
    for name in ("X-Original-To", "Delivered-To", "To", "X-Envelope-To"):
        for _display, address in addresses(msg, name):
            match = _VERP.match(address)
            if match:
                rcpt = _VERP_RCPT.search(match.group("tag"))
                if rcpt:
                    return f"{rcpt.group('local')}@{rcpt.group('domain')}"
    return None


def _original_ids(msg: EmailMessage, text: str) -> list[str]:
    """Find the Message-ID of the message that bounced, most reliable source first."""
    found: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                found += msgid_list(header(inner[0], "Message-ID"))
        elif ctype == "text/rfc822-headers":
            parsed = HeaderParser(policy=READ_POLICY).parsestr(part_text(part))
            found += msgid_list(header(parsed, "Message-ID"))
    found += msgid_list(header(msg, "In-Reply-To"))
    found += msgid_list(header(msg, "References"))
    found += _TEXT_MSGID.findall(text)
    own = set(msgid_list(header(msg, "Message-ID")))
    unique: dict[str, None] = {}
    for item in found:
        if item not in own:
            unique.setdefault(item, None)
    return list(unique)
