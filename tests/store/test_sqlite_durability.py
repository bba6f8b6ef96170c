"""A message acknowledged by the SQLite store survives kill -9 of the process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from gateway.clock import ManualClock
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy
from gateway.model import Contact, Event, InboundMessage
from gateway.store.sqlite import SqliteStore

WRITER = r"""
import asyncio, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from datetime import UTC, datetime
from gateway.clock import SystemClock
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy
from gateway.model import Contact, Event, InboundMessage
from gateway.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.open()
    ingest = Ingestor(store, SystemClock(), lambda m: "q", lambda c: ChannelPolicy())
    async def one(i: int) -> None:
        msg = InboundMessage("ch", "test", "test", f"p{i}", Contact(f"+{i % 50}"),
                             datetime.now(UTC), text=f"m{i}")
        result = await ingest.message(msg)
        print(result.message.provider_message_id, flush=True)
    i = 0
    while True:
        await asyncio.gather(*(one(i + k) for k in range(20)))
        i += 20

asyncio.run(main())
"""


async def test_acknowledged_messages_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(db),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    acked: list[str] = []
    while len(acked) < 500:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "writer exited early"
        acked.append(line.decode().strip())
    proc.send_signal(signal.SIGKILL)
    # Whatever was printed before the kill was acknowledged; read what is left in the pipe too.
    rest = await proc.stdout.read()
    acked.extend(x for x in rest.decode().split() if x)
    await proc.wait()

    store = SqliteStore(db)
    await store.open()
    try:
        for pid in acked:
            assert await store.find_message("ch", pid) is not None, pid
    finally:
        await store.close()


def message(pid: str) -> InboundMessage:
    return InboundMessage(
        "ch", "test", "test", pid, Contact(f"+{pid}"), datetime.now(UTC), text=pid
    )


@contextlib.asynccontextmanager
async def two_processes(server: SqliteStore, db: Path) -> AsyncIterator[tuple[Ingestor, Ingestor]]:
    """`server` and a second store on the same file (say, `gateway email backfill`), each
    behind an ingestor: what the gateway and a CLI command writing beside it look like."""
    other = SqliteStore(db)
    await server.open()
    await other.open()
    try:
        clock = ManualClock()
        yield (
            Ingestor(server, clock, lambda m: "q", lambda c: ChannelPolicy()),
            Ingestor(other, clock, lambda m: "q", lambda c: ChannelPolicy()),
        )
    finally:
        await other.close()
        await server.close()


def pids(events: list[Event]) -> list[str | None]:
    return [e.message.provider_message_id for e in events if e.message]


async def test_events_another_process_wrote_are_read_between_and_after_our_own(
    tmp_path: Path,
) -> None:
    """The server's in-memory tail of the log must never hide what another process appended."""
    server = SqliteStore(tmp_path / "shared.db", probe_interval=0)
    async with two_processes(server, tmp_path / "shared.db") as (mine, theirs):
        await mine.message(message("1"))
        ours = await server.read_events(None)
        await theirs.message(message("2"))  # after our newest event
        assert pids(await server.read_events(ours[-1].cursor)) == ["2"]
        await mine.message(message("3"))  # our next write follows theirs in the log
        everything = await server.read_events(None)
        assert pids(everything) == ["1", "2", "3"]
        tail = await server.read_events(everything[-3].cursor)
        assert [e.cursor for e in tail] == [e.cursor for e in everything[-2:]]
        assert await server.read_events(everything[-1].cursor) == []


async def test_another_processs_newest_events_show_up_within_the_probe_interval(
    tmp_path: Path,
) -> None:
    """Between probes of the file the server trusts its memory: an append by another process
    after our newest event is seen once the interval has passed, complete and in order."""
    ticks = [100.0]
    server = SqliteStore(tmp_path / "shared.db", probe_interval=0.5, monotonic=lambda: ticks[0])
    async with two_processes(server, tmp_path / "shared.db") as (mine, theirs):
        await mine.message(message("1"))
        ours = await server.read_events(None)  # probes: memory is the whole log
        await theirs.message(message("2"))
        assert await server.read_events(ours[-1].cursor) == []  # within the interval
        ticks[0] += 0.5
        late = await server.read_events(ours[-1].cursor)
        assert pids(late) == ["2"]
        assert [e.type for e in late] == ["conversation.created", "message.received"]
