"""Import older mail on request: `gateway email backfill --channel NAME [--since DATE]`.

The live reader only follows new mail; this walks the mailbox (or the part of it received
since a date) in UID order on its own connection. It is resumable (its own cursor in the
key-value store, advanced after each stored message) and idempotent (the core deduplicates
on Message-ID), so running it twice, or after an interruption, imports nothing twice.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import structlog
from tqdm import tqdm

from gateway.channels import Inbound, KeyValue, MessageHistory
from gateway.clock import Clock, SystemClock
from plugins.email.config import EmailConfig
from plugins.email.cursor import Cursor, backfill_key, load_cursor, save_cursor
from plugins.email.deliver import Delivered, deliver_batch
from plugins.email.imap import ImapSession

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
BATCH = 10


def imap_date(day: date) -> str:
    """Format a date the way IMAP SEARCH wants it (`1-Feb-2026`), independent of locale."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"


async def backfill(
    config: EmailConfig,
    inbound: Inbound,
    kv: KeyValue,
    since: date | None = None,
    progress: bool = True,
    *,
    clock: Clock | None = None,
    history: MessageHistory | None = None,
) -> int:
    """Import the mailbox's mail (received on or after `since`); return how many were new.

    Messages the core already had (duplicates) are not counted. An interrupted run resumes
    after the last message it stored, provided the mailbox (UIDVALIDITY) and `since` match.
    `history` (the store) tells which replies answer mail the channel has, as for the live
    reader (see `deliver.answers_known_mail`).
    """
    log = structlog.get_logger("plugins.email").bind(channel=config.name)
    now = (clock or SystemClock()).now
    session = ImapSession(config.imap)
    key = backfill_key(config.name)
    since_text = since.isoformat() if since else None
    imported = 0
    try:
        await session.connect()
        box = await session.select()
        saved = await load_cursor(kv, key)
        resume_after = 0
        if saved and saved.uidvalidity == box.uidvalidity and saved.since == since_text:
            resume_after = saved.last_uid
        criteria = ("SINCE", imap_date(since)) if since else ("ALL",)
        uids = [u for u in await session.search(*criteria) if u > resume_after]
        log.info("email.backfill.start", messages=len(uids), resume_after=resume_after)
        with tqdm(total=len(uids), disable=not progress, unit="msg", desc=config.name) as bar:

            async def save(uid: int) -> None:
                await save_cursor(kv, key, Cursor(box.uidvalidity, uid, since=since_text))

            def stored(_uid: int, delivered: Delivered) -> None:
                nonlocal imported
                if not delivered.duplicate and not delivered.rejected:
                    imported += 1
                bar.update(1)

            for start in range(0, len(uids), BATCH):
                await deliver_batch(
                    await session.fetch(uids[start : start + BATCH]),
                    config=config,
                    inbound=inbound,
                    kv=kv,
                    now=now(),
                    save_cursor=save,
                    on_stored=stored,
                    log=log,
                    history=history,
                )
        log.info("email.backfill.done", imported=imported)
        return imported
    finally:
        await session.close()


def parse_since(text: str | None) -> date | None:
    """Parse the CLI's `--since` (ISO `YYYY-MM-DD`); None when not given."""
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).date()
