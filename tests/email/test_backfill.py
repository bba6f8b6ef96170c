"""Backfill against a real Dovecot: SINCE filter, resumable after a failure, idempotent."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pytest

from gateway.model import InboundMessage
from plugins.email.backfill import backfill, imap_date, parse_since
from plugins.email.cursor import backfill_key
from tests.email.conftest import MemoryKV, RecordingInbound, email_config
from tests.email.servers import Dovecot
from tests.email.test_imap_live import customer_mail, until


async def fill(dovecot: Dovecot) -> None:
    for n in range(3):
        await dovecot.append(customer_mail(n, "Old"), date=f"0{n + 1}-Oct-2026 10:00:00 +0000")
    for n in range(3, 6):
        await dovecot.append(customer_mail(n, "New"), date=f"2{n}-Nov-2026 10:00:00 +0000")


def config(dovecot: Dovecot) -> Any:
    return email_config(dovecot.imap_settings())


async def test_backfill_since_imports_and_is_idempotent(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV
) -> None:
    await fill(dovecot)
    imported = await backfill(config(dovecot), inbound, kv, date(2026, 11, 1), progress=False)
    assert imported == 3
    assert [m.subject for m in inbound.messages] == ["New 3", "New 4", "New 5"]

    again = await backfill(config(dovecot), inbound, kv, date(2026, 11, 1), progress=False)
    assert again == 0
    assert len(inbound.messages) == 3

    everything = await backfill(config(dovecot), inbound, kv, None, progress=False)
    assert everything == 3  # the three October mails; the November ones are duplicates
    assert inbound.duplicates == 3
    assert sorted(m.subject or "" for m in inbound.messages)[:3] == ["New 3", "New 4", "New 5"]


class FailingOnce(RecordingInbound):
    """An ingest that is down for the second message of the first run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def message(self, inbound: InboundMessage) -> Any:
        self.calls += 1
        if self.calls == 2:
            raise ConnectionError("store unavailable")
        return await super().message(inbound)


async def test_backfill_resumes_after_interruption(dovecot: Dovecot, kv: MemoryKV) -> None:
    await fill(dovecot)
    inbound = FailingOnce()
    with pytest.raises(ConnectionError):
        await backfill(config(dovecot), inbound, kv, None, progress=False)
    assert len(inbound.messages) == 1
    cursor = orjson.loads(kv.data[backfill_key("support-mail")])
    assert cursor["last_uid"] == 1

    imported = await backfill(config(dovecot), inbound, kv, None, progress=False)
    assert imported == 5
    assert [m.subject for m in inbound.messages] == [
        "Old 0",
        "Old 1",
        "Old 2",
        "New 3",
        "New 4",
        "New 5",
    ]
    assert inbound.duplicates == 0


async def test_backfill_after_live_reader_imports_nothing_twice(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, make_adapter: Any
) -> None:
    await fill(dovecot)
    adapter = make_adapter(email_config(dovecot.imap_settings(first_sync="all")))
    await adapter.start()
    await until(adapter, lambda: len(inbound.messages) == 6)
    await adapter.stop()
    assert await backfill(config(dovecot), inbound, kv, None, progress=False) == 0
    assert len(inbound.messages) == 6


async def test_backfill_progress_bar_writes_to_stderr(
    dovecot: Dovecot, inbound: RecordingInbound, kv: MemoryKV, capsys: Any
) -> None:
    await fill(dovecot)
    assert await backfill(config(dovecot), inbound, kv, None, progress=True) == 6
    assert "6/6" in capsys.readouterr().err


def test_dates() -> None:
    assert imap_date(date(2026, 2, 1)) == "1-Feb-2026"
    assert parse_since("2026-11-01") == date(2026, 11, 1)
    assert parse_since(None) is None
