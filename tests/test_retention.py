"""Event log retention as the scheduler runs it: by age, at most every ten minutes, in batches.

On the SQLite store, where an event's age is its own time (the gateway's clock), so a manual
clock drives it; the stores' pruning itself is in the store contract suite, on both stores.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from structlog.testing import capture_logs

import gateway.retention
from gateway.clock import ManualClock
from gateway.retention import EventRetention
from gateway.store.sqlite import SqliteStore
from tests.conftest import inbound
from tests.store.test_contract import make_ingestor


async def test_events_older_than_the_retention_go_in_batches_every_ten_minutes(
    sqlite_store: SqliteStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.retention, "BATCH", 2)
    ingest = make_ingestor(sqlite_store, clock)
    for i in range(3):
        await ingest.message(inbound(f"m{i}", address=f"+5000{i}", pid=f"r{i}"))
    old = await sqlite_store.read_events(None)
    assert len(old) == 6
    retention = EventRetention(sqlite_store, clock, timedelta(hours=1))

    clock.advance(timedelta(minutes=30))  # younger than an hour: kept
    assert await retention.run() == 0
    await ingest.message(inbound("later", address="+50009", pid="r9"))
    clock.advance(timedelta(minutes=5))  # old enough now, but the last pass was 5 min ago
    assert await retention.run() == 0
    clock.advance(timedelta(minutes=35))
    with capture_logs() as logs:
        assert await retention.run() == 6  # three batches of two
    assert [e["events"] for e in logs if e["event"] == "retention.pruned"] == [6]
    left = await sqlite_store.read_events(None)
    assert len(left) == 2 and left[0].cursor is not None
    assert left[0].cursor > (old[-1].cursor or "")
    assert await sqlite_store.read_events(old[0].cursor) == left  # a reader behind resumes here


async def test_without_a_retention_nothing_is_pruned(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    ingest = make_ingestor(sqlite_store, clock)
    await ingest.message(inbound("m", address="+50100", pid="k1"))
    clock.advance(timedelta(days=3650))
    assert await EventRetention(sqlite_store, clock, None).run() == 0
    assert len(await sqlite_store.read_events(None)) == 2
