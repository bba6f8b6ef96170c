"""The persisted IMAP position: which mailbox generation (UIDVALIDITY) and the last UID stored.

Saved in the gateway's key-value store after each message is durably ingested, so a restart
resumes exactly where it stopped: never a gap, at worst one message fetched twice (which the
core's dedup on Message-ID drops).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.channels import KeyValue


@dataclass(frozen=True, slots=True)
class Cursor:
    uidvalidity: int
    last_uid: int
    since: str | None = None
    """Only for backfill cursors: the SINCE date the run was started with."""
    synced_on: str | None = None
    """Live cursors: the day (YYYY-MM-DD) it last moved. If the mailbox is renumbered (a new
    UIDVALIDITY), only mail from that day on is read again, not the whole mailbox."""


def live_key(channel: str) -> str:
    return f"email:{channel}:cursor"


def backfill_key(channel: str) -> str:
    return f"email:{channel}:backfill"


async def load_cursor(kv: KeyValue, key: str) -> Cursor | None:
    """Return the saved cursor, or None when there is none (or it is unreadable)."""
    blob = await kv.kv_get(key)
    if not blob:
        return None
    try:
        data = orjson.loads(blob)
        return Cursor(
            uidvalidity=int(data["uidvalidity"]),
            last_uid=int(data["last_uid"]),
            since=data.get("since"),
            synced_on=data.get("synced_on"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


async def save_cursor(kv: KeyValue, key: str, cursor: Cursor) -> None:
    data: dict[str, object] = {"uidvalidity": cursor.uidvalidity, "last_uid": cursor.last_uid}
    if cursor.since is not None:
        data["since"] = cursor.since
    if cursor.synced_on is not None:
        data["synced_on"] = cursor.synced_on
    await kv.kv_set(key, orjson.dumps(data).decode())
