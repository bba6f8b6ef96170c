"""Hand fetched messages to the gateway: parse (off the event loop), ingest, report.

Shared by the live IMAP loop and backfill so both store mail the same way.

A batch is parsed ahead, every message in its own worker thread, while the messages before it
are being stored: storing waits on the disk (one durable commit per message, acknowledged
only after it), parsing on the CPU, so the two overlap. Storing itself stays strictly in UID
order, one message at a time, so a conversation's messages keep the mailbox's order and the
cursor only ever advances past stored mail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from gateway.channels import Inbound, KeyValue, MessageHistory
from gateway.errors import InvalidInput
from gateway.model import Direction, InboundMessage, Message
from plugins.email.config import EmailConfig
from plugins.email.parse import RAW_ENCODING, ParsedEmail, content_key, parse_email
from plugins.email.threads import remember


@dataclass(frozen=True, slots=True)
class Delivered:
    parsed: ParsedEmail
    result: Any
    rejected: bool = False

    @property
    def duplicate(self) -> bool:
        """Tell whether ingest had already stored this message (a re-fetch)."""
        return bool(getattr(self.result, "duplicate", False))


SaveCursor = Callable[[int], Awaitable[None]]
"""Persist "stored up to this UID"; awaited after each message is stored."""
OnStored = Callable[[int, "Delivered"], None]
"""Told (uid, what happened) after each message: logging, counting, a progress bar."""


async def parse_raw(raw: bytes, config: EmailConfig, now: datetime) -> ParsedEmail:
    """Parse `raw` in a worker thread (CPU work: the event loop keeps serving meanwhile)."""
    return await asyncio.to_thread(
        parse_email,
        raw,
        config.name,
        now,
        own_address=config.address,
        max_attachment_bytes=config.max_attachment_bytes,
    )


async def store(
    parsed: ParsedEmail,
    *,
    config: EmailConfig,
    inbound: Inbound,
    kv: KeyValue,
    history: MessageHistory | None = None,
    log: Any = None,
    progress: Callable[[], Awaitable[None]] | None = None,
) -> Delivered:
    """Store `parsed` through `inbound`, apply any bounce status; return what happened.

    A reply's text has its quoted history cut only if it answers a mail the channel has
    (`answers_known_mail`, asked of `history`; without one, the headers decide). A mail
    whose Message-ID another mail already has (see `_another_mail`) is stored under a
    derived id rather than dropped as a duplicate (see `_store_reused`).

    Returns once the message is durably stored. A message the core refuses as invalid is
    logged and reported as `rejected` (retrying it would block the mailbox forever); any
    other failure propagates so the caller retries without advancing its cursor.
    `progress` (the caller's cursor save) runs after the message is stored, side by side
    with remembering its thread, so the store can commit both together.
    """
    logger = log if log is not None else structlog.get_logger("plugins.email")
    if parsed.replying and history is not None and not await answers_known_mail(parsed, history):
        parsed = replace(parsed, message=_whole(parsed.message))
    message = parsed.message
    try:
        result = await inbound.message(message)
    except InvalidInput as exc:
        logger.error(
            "email.message_rejected",
            channel=config.name,
            provider_message_id=message.provider_message_id,
            reason=exc.message,
        )
        if progress is not None:
            await progress()
        return Delivered(parsed=parsed, result=None, rejected=True)
    if getattr(result, "duplicate", False) and parsed.message_id is not None:
        stored = getattr(result, "message", None)
        if isinstance(stored, Message) and _another_mail(stored, message, config.address):
            result = await _store_reused(message, stored, inbound, config, logger)
    defects = message.extra.get("defects")
    if defects and not getattr(result, "duplicate", False):
        # Stored as well as it could be read: say so, so a mail that reads oddly (a body
        # missing, a file that will not open) can be traced to the sender's mailer.
        logger.warning(
            "email.malformed",
            channel=config.name,
            provider_message_id=getattr(result, "message", message).provider_message_id,
            defects=defects,
        )
    for status in parsed.statuses:
        await inbound.status(status)
    after: list[Awaitable[None]] = [remember(kv, parsed)]
    if progress is not None:
        after.append(progress())
    await asyncio.gather(*after)
    return Delivered(parsed=parsed, result=result)


MAX_REFS_CHECKED = 30
"""The most thread references looked up, nearest ancestors first (our own replies cap their
References at 30 too); a mail answering a thread we have names one of its last mails."""


async def answers_known_mail(parsed: ParsedEmail, history: MessageHistory) -> bool:
    """Tell whether a mail whose headers say it is a reply answers a mail this channel has.

    A customer answering the shop's own order notification (sent by another system, never
    stored here) carries In-Reply-To / References too, yet writes a first mail to us: cutting
    its "quoted history" dropped the order and tracking details it quotes. So a mail counts
    as replying when one of its references is a message the channel stored (theirs or ours);
    a `Re:` subject with no reference at all (a client that sends none) counts when the
    channel already has mail of that contact.
    """
    message = parsed.message
    extra = message.extra
    refs = [*extra.get("in_reply_to", ()), *reversed(extra.get("references", ()))]
    nearest = list(dict.fromkeys(refs))[:MAX_REFS_CHECKED]
    if nearest:
        for ref in nearest:
            if await history.find_message(message.channel, ref) is not None:
                return True
        return False
    earlier = await history.list_contact_messages(message.channel, message.contact.address, limit=1)
    return bool(earlier)


def _whole(message: InboundMessage) -> InboundMessage:
    """`message` with its whole text (`extra.full_text`) as its text."""
    full = message.extra.get("full_text")
    extra = message.extra
    truncated = extra.get("truncated", [])
    if "full_text" in truncated and "text" not in truncated:
        extra = {**extra, "truncated": [*truncated, "text"]}
    return replace(message, text=full if isinstance(full, str) and full else None, extra=extra)


def _body(message: InboundMessage | Message) -> str | None:
    """The mail's whole text: `text` has quoted history cut by rules that depend on what the
    store held at the time, so a re-fetch of the same mail could differ there."""
    full = message.extra.get("full_text")
    return full if isinstance(full, str) else message.text


def _another_mail(stored: Message, message: InboundMessage, own_address: str | None) -> bool:
    """Tell whether the mail stored under this Message-ID is another mail than `message`.

    Against a customer's mail: another sender or another text (the subject is left out: a
    mailing list re-sends the same mail with `[List]` before it). A provider's re-delivery, or
    the same mail fetched again (a renumbered mailbox, a restart), is the same in both.
    Against one of our replies: only a copy of it coming back (from our own address: a Bcc, a
    list) is the same mail; anyone else's mail naming its id is another one, and was dropped
    as a duplicate of our reply (re-audit).
    """
    if stored.direction != Direction.IN:
        own = (own_address or "").lower()
        ours = message.extra.get("auto_reply") == "own-address"
        return not ours and message.contact.address.lower() != own
    address = stored.contact.address if stored.contact is not None else None
    return (address, _body(stored)) != (message.contact.address, _body(message))


def reused_id(message: InboundMessage) -> str:
    """The provider id of a mail whose Message-ID another mail already has: that id plus a
    short digest of this mail's content (`content_key`, blind to the trace headers each
    delivery adds), so fetching this mail again finds it under the same id."""
    raw = message.raw if isinstance(message.raw, str) else ""
    digest = content_key(raw.encode(RAW_ENCODING)).removeprefix("sha256:")[:16]
    return f"{message.provider_message_id}#{digest}"


async def _store_reused(
    message: InboundMessage,
    stored: Message,
    inbound: Inbound,
    config: EmailConfig,
    logger: Any,
) -> Any:
    """Store a mail that reuses another mail's Message-ID under a derived id (`reused_id`).

    Message-IDs are the sender's to make, and careless or hostile senders repeat them (a
    script with a fixed id, a mail client bug, a forged copy): dropping such a mail as a
    duplicate lost a customer's message with nothing but an info line to show for it.
    """
    derived = reused_id(message)
    result = await inbound.message(replace(message, provider_message_id=derived))
    if not getattr(result, "duplicate", False):  # a re-fetch of it was logged the first time
        logger.warning(
            "email.message_id_reused",
            channel=config.name,
            provider_message_id=message.provider_message_id,
            stored_as=derived,
            conversation_id=getattr(getattr(result, "conversation", None), "id", None),
            first_conversation_id=stored.conversation_id,
        )
    return result


async def deliver_batch(
    fetched: Sequence[tuple[int, bytes]],
    *,
    config: EmailConfig,
    inbound: Inbound,
    kv: KeyValue,
    now: datetime,
    save_cursor: SaveCursor,
    on_stored: OnStored | None = None,
    log: Any = None,
    storing: asyncio.Lock | None = None,
    history: MessageHistory | None = None,
) -> None:
    """Store fetched `(uid, raw)` pairs in order, parsing ahead (see the module docstring).

    After each message is stored, `save_cursor(uid)` is awaited (committed together with
    its thread memory) before the next one is stored; a failure stops the batch there, so
    the cursor never passes a message that was not stored. `storing` is held from handing a
    message to ingest until its cursor is saved: whoever stops the reader takes it first, so
    a shutdown never falls between the two (which would fetch that message again next time).
    """
    guard = storing or asyncio.Lock()
    parsing = [asyncio.ensure_future(parse_raw(raw, config, now)) for _uid, raw in fetched]
    try:
        for (uid, _raw), parse in zip(fetched, parsing, strict=True):
            parsed = await parse
            async with guard:
                delivered = await store(
                    parsed,
                    config=config,
                    inbound=inbound,
                    kv=kv,
                    history=history,
                    log=log,
                    progress=partial(save_cursor, uid),
                )
            if on_stored is not None:
                on_stored(uid, delivered)
    finally:
        for parse in parsing:
            parse.cancel()
