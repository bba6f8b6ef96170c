"""Shared fixtures: real stores on real files/servers, an injectable clock, sample messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.model import Contact, InboundMessage
from gateway.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"

STORE_KINDS = ["sqlite"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    kind = request.param
    if kind == "sqlite":
        s = SqliteStore(tmp_path / "gateway.db")
    else:  # pragma: no cover - other kinds arrive with their issues
        raise AssertionError(kind)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def inbound(
    text: str = "Hola",
    *,
    channel: str = "wa-main",
    address: str = "+5511999990000",
    pid: str | None = None,
    sent_at: datetime | None = None,
    channel_type: str = "whatsapp",
    name: str | None = "Ana",
) -> InboundMessage:
    """A normalized customer message, as an adapter would hand it to ingest."""
    return InboundMessage(
        channel=channel,
        channel_type=channel_type,
        provider="test",
        provider_message_id=pid or f"pm-{text}-{address}",
        contact=Contact(address=address, display_name=name),
        sent_at=sent_at or datetime(2026, 11, 25, 7, 0, tzinfo=UTC),
        text=text,
    )
