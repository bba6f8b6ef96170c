"""Hand one fetched message to the gateway: parse (off the event loop), ingest, report.

Shared by the live IMAP loop and backfill so both store mail the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
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


async def deliver(
    raw: bytes,
    *,
    config: EmailConfig,
    inbound: Inbound,
    kv: KeyValue,
    now: datetime,
    log: Any = None,
) -> Delivered:
    """Parse `raw`, store it through `inbound`, apply any bounce status; return what happened.

    Returns once the message is durably stored. A message the core refuses as invalid is
    logged and reported as `rejected` (retrying it would block the mailbox forever); any
    other failure propagates so the caller retries without advancing its cursor.
    """
    logger = log if log is not None else structlog.get_logger("plugins.email")
    parsed = await asyncio.to_thread(
        parse_email,
        raw,
        config.name,
        now,
        own_address=config.address,
        max_attachment_bytes=config.max_attachment_bytes,
    )
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
        return Delivered(parsed=parsed, result=None, rejected=True)
    for status in parsed.statuses:
        await inbound.status(status)
    await remember(kv, parsed)
    return Delivered(parsed=parsed, result=result)
