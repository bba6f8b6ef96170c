"""The SQLite store when its database cannot be used right now: StoreUnavailable, not a 500.

A full disk, or another process holding the write lock past `busy_timeout` (a backup, a CLI
command), is an outage like a Redis one: nothing is acknowledged and the caller retries, and
once the database takes writes again the retried message is stored exactly once. A bad
statement (a bug) stays what it is. The full disk is SQLite's own `max_page_count` limit on the
writer's connection, which fails exactly as a full file system does (SQLITE_FULL).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.clock import ManualClock
from gateway.errors import StoreUnavailable
from gateway.model import State
from gateway.store.base import HEALTH_PROBE_KEY
from gateway.store.sqlite import SqliteStore
from tests.conftest import inbound
from tests.store.test_contract import make_ingestor


async def test_a_full_disk_is_store_unavailable_and_the_retry_is_stored_once(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    ingest = make_ingestor(sqlite_store, clock)
    await ingest.message(inbound("first", pid="wamid.first"))
    pages = await sqlite_store._write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await sqlite_store._write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))

    refused = None
    for i in range(200):  # the file is full once the pages it has are used up
        try:
            await ingest.message(inbound("x" * 2000, pid=f"wamid.{i}", address=f"+55{i:09d}"))
        except StoreUnavailable as exc:
            refused = (i, exc)
            break
    assert refused is not None, "the database never filled up"
    i, exc = refused
    assert exc.code == "store_unavailable" and "full" in str(exc)
    assert isinstance(exc.__cause__, sqlite3.OperationalError)

    await sqlite_store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    retry = inbound("x" * 2000, pid=f"wamid.{i}", address=f"+55{i:09d}")
    assert not (await ingest.message(retry)).duplicate
    assert (await ingest.message(retry)).duplicate


async def test_a_write_lock_held_past_busy_timeout_is_store_unavailable(
    sqlite_store: SqliteStore, clock: ManualClock
) -> None:
    ingest = make_ingestor(sqlite_store, clock)
    await sqlite_store._write(lambda c: c.execute("PRAGMA busy_timeout = 50"))
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing (a backup, a CLI command)
        with pytest.raises(StoreUnavailable) as refused:
            await ingest.message(inbound("Hola", pid="wamid.locked"))
        assert "locked" in str(refused.value)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert not (await ingest.message(inbound("Hola", pid="wamid.locked"))).duplicate


async def test_a_bad_statement_is_not_an_outage(sqlite_store: SqliteStore) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await sqlite_store._read(lambda c: c.execute("SELECT * FROM no_such_table").fetchall())


async def test_ping_says_down_while_writes_fail_though_reads_work(
    tmp_path: Path, clock: ManualClock
) -> None:
    """/readyz and gateway_store_up go by `ping`: on a full disk reads still answer, so the
    node looked ready while every webhook got 503 (a load balancer kept sending it traffic)."""
    now = [1000.0]
    free = [10**9]
    store = SqliteStore(
        tmp_path / "gateway.db", monotonic=lambda: now[0], free_bytes=lambda path: free[0]
    )
    await store.open()
    try:
        ingest = make_ingestor(store, clock)
        await ingest.message(inbound("first", pid="wamid.first"))
        assert await store.ping()
        pages = await store._write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store._write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        with pytest.raises(StoreUnavailable):
            for i in range(200):
                await ingest.message(inbound("x" * 2000, pid=f"wamid.{i}", address=f"+55{i:07d}"))
        assert not await store.ping()  # a fresh failure is believed, however small a probe
        assert await store.problem() == "writes_failing"  # what /readyz says
        # The scheduler's sweep, with nothing due, commits an empty transaction every second
        # even on a full disk: that proves nothing about room for a message.
        assert await store.claim_due(clock.now(), 100, timedelta(seconds=30)) == []
        assert not await store.ping()
        now[0] += 10  # no traffic since: ping would probe, but the file system is full
        free[0] = 4096
        assert not await store.ping()
        free[0] = 10**9  # room again: ping's own small write goes through
        assert await store.kv_get(HEALTH_PROBE_KEY) is None
        assert await store.ping()
        assert await store.kv_get(HEALTH_PROBE_KEY) is not None
        await store._write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        await ingest.message(inbound("after", pid="wamid.after", address="+5599"))
        assert await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize("removed", ["-wal", "dir"])
async def test_database_files_deleted_under_the_gateway_refuse_every_write(
    tmp_path: Path, clock: ManualClock, removed: str
) -> None:
    """An open connection goes on writing to unlinked files, and SQLite reports success: each
    message acknowledged after an `rm` was lost at the next crash (the WAL) or stop (the
    directory). The writer notices before its next batch: 503 from then on, and the log says
    why once."""
    folder = tmp_path / "data"
    store = SqliteStore(folder / "gateway.db")
    await store.open()
    try:
        ingest = make_ingestor(store, clock)
        await ingest.message(inbound("before", pid="wamid.before"))
        if removed == "dir":
            shutil.rmtree(folder)
        else:
            (folder / "gateway.db-wal").unlink()
        with capture_logs() as logs:
            # Readiness sees it at once, before any write (re-audit: up to 2 s later).
            assert await store.problem() == "files_gone"
            for attempt in range(3):
                with pytest.raises(StoreUnavailable) as refused:
                    await ingest.message(inbound("after", pid=f"wamid.after{attempt}"))
                assert "deleted or replaced" in str(refused.value)
                assert str(folder) not in str(refused.value)  # clients see no path
        gone = [line for line in logs if line["event"] == "store.files_gone"]
        assert len(gone) == 1 and "was deleted" in str(gone[0]["reason"])
        assert str(folder) in str(gone[0]["reason"])
        assert not await store.ping()
        assert await store.problem() == "files_gone"  # what /readyz says
    finally:
        await store.close()


async def test_a_database_file_replaced_under_the_gateway_refuses_every_write(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A backup copied over the live file: writes would go to the old, unlinked one."""
    path = tmp_path / "gateway.db"
    store = SqliteStore(path)
    await store.open()
    try:
        ingest = make_ingestor(store, clock)
        await ingest.message(inbound("before", pid="wamid.before"))
        copy = tmp_path / "copy.db"
        shutil.copyfile(path, copy)
        os.replace(copy, path)
        with pytest.raises(StoreUnavailable, match="deleted or replaced"):
            await ingest.message(inbound("after", pid="wamid.after"))
    finally:
        await store.close()


async def test_ping_does_not_wait_behind_the_readers_queue(sqlite_store: SqliteStore) -> None:
    """A busy node's reads queue behind each other; readiness must not: /readyz waited its
    turn and said the store was unreachable (a health checker then took a busy, healthy node
    out of rotation)."""
    started, release = threading.Event(), threading.Event()

    def hold(_conn: sqlite3.Connection) -> bool:
        started.set()
        return release.wait(10)

    busy = asyncio.ensure_future(sqlite_store._read(hold))
    assert await asyncio.to_thread(started.wait, 5)  # the reader is taken
    try:
        async with asyncio.timeout(2):
            assert await sqlite_store.ping()
        assert not busy.done()  # the reader was held the whole time
    finally:
        release.set()
        await busy


async def test_a_damaged_database_is_store_unavailable_not_a_crash(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A copy written over a live database (or a failing disk) leaves pages SQLite cannot
    read: requests get 503 store_unavailable, as for any unusable store, not a 500."""
    path = tmp_path / "gateway.db"
    store = SqliteStore(path)
    await store.open()
    ingest = make_ingestor(store, clock)
    for i in range(300):  # enough rows for the tables to span pages past the first ones
        await ingest.message(inbound("x" * 500, pid=f"wamid.{i}", address=f"+55{i:09d}"))
    conversation = (await ingest.message(inbound("last", pid="wamid.last"))).conversation
    await store.close()
    data = bytearray(path.read_bytes())  # keep the header and the schema page, wreck the rest
    data[4096 * 2 : 4096 * 10] = b"\xde\xad" * 4096 * 4
    path.write_bytes(bytes(data))
    store = SqliteStore(path)
    await store.open()
    try:
        with pytest.raises(StoreUnavailable, match="malformed"):
            for _ in range(3):  # whichever page a read touches first
                await store.list_conversations(State.WAITING, limit=1000)
                await store.get_conversation(conversation.id)
                await store.read_events(None, limit=1000)
    finally:
        await store.close()


async def test_the_documented_online_backup_holds_every_acknowledged_message(
    tmp_path: Path, clock: ManualClock
) -> None:
    """README's backup: SQLite's backup API (the sqlite3 CLI's `.backup`) while the gateway
    writes. The copy opens as a store with every message acknowledged before it began."""
    store = SqliteStore(tmp_path / "gateway.db")
    await store.open()
    ingest = make_ingestor(store, clock)
    try:
        before = [
            (await ingest.message(inbound(f"m{i}", pid=f"b{i}", address=f"+5{i:08d}"))).message.id
            for i in range(50)
        ]

        def backup() -> None:
            source = sqlite3.connect(tmp_path / "gateway.db")
            target = sqlite3.connect(tmp_path / "backup.db")
            with target:
                source.backup(target)
            source.close()
            target.close()

        copying = asyncio.ensure_future(asyncio.to_thread(backup))
        during = [
            ingest.message(inbound(f"d{i}", pid=f"d{i}", address=f"+6{i:08d}")) for i in range(50)
        ]
        await asyncio.gather(copying, *during)
    finally:
        await store.close()
    copy = SqliteStore(tmp_path / "backup.db")
    await copy.open()
    try:
        for message_id in before:
            assert await copy.get_message(message_id) is not None
    finally:
        await copy.close()
