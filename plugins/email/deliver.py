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
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from gateway.channels import Inbound, KeyValue
from gateway.errors import InvalidInput
from plugins.email.config import EmailConfig
from plugins.email.parse import ParsedEmail, parse_email
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
    log: Any = None,
    progress: Callable[[], Awaitable[None]] | None = None,
) -> Delivered:
    """Store `parsed` through `inbound`, apply any bounce status; return what happened.

    Returns once the message is durably stored. A message the core refuses as invalid is
    logged and reported as `rejected` (retrying it would block the mailbox forever); any
    other failure propagates so the caller retries without advancing its cursor.
    `progress` (the caller's cursor save) runs after the message is stored, side by side
    with remembering its thread, so the store can commit both together.
    """
    logger = log if log is not None else structlog.get_logger("plugins.email")
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
    for status in parsed.statuses:
        await inbound.status(status)
    after: list[Awaitable[None]] = [remember(kv, parsed)]
    if progress is not None:
        after.append(progress())
    await asyncio.gather(*after)
    return Delivered(parsed=parsed, result=result)


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
                    log=log,
                    progress=partial(save_cursor, uid),
                )
            if on_stored is not None:
                on_stored(uid, delivered)
    finally:
        for parse in parsing:
            parse.cancel()
