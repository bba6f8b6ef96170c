"""Core benchmarks (issue 2): ingest through the store, and the timer sweep.

1. Ingest of N inbound text messages from N distinct contacts into waiting conversations,
   through `Ingestor.message` with C concurrent callers (as webhooks arrive), as messages/s and
   as a ratio to a bare SQLite loop that writes the same rows (conversation, message, two
   events, a deadline) committing each message before acknowledging it, with the same
   durability settings (WAL, synchronous=FULL). The ratio is what our store keeps of what
   SQLite can do for acknowledged-one-by-one messages.
2. The timer sweep: M conversations whose reply window is due fire through the scheduler
   (claim, lifecycle, compare-and-set, event), as deadlines/s and as a ratio to a bare loop of
   the same UPDATEs in one transaction.

Run: python bench/core_bench.py [--messages 10000] [--deadlines 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.clock import ManualClock
from gateway.codec import encode
from gateway.directory import Directory, QueueInfo
from gateway.ids import new_id
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy, open_conversation
from gateway.model import Contact, InboundMessage
from gateway.store.sqlite import SCHEMA, SqliteStore, micros
from gateway.timers import DeadlineHandler, Scheduler

T0 = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
POLICY = ChannelPolicy(reply_window=timedelta(hours=24))


def message(i: int) -> InboundMessage:
    return InboundMessage(
        channel="wa-main",
        channel_type="whatsapp",
        provider="cloud_api",
        provider_message_id=f"wamid.bench{i:08d}",
        contact=Contact(f"+55119{i:08d}", "Bench"),
        sent_at=T0,
        text=f"Hola, mensaje {i}",
        raw={"id": f"wamid.bench{i:08d}", "type": "text", "text": {"body": f"Hola {i}"}},
    )


def bare_loop(path: Path, n: int) -> float:
    """The same rows, one durable commit per message, no lifecycle or dedup logic."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    clock = ManualClock(T0)
    rows = []
    for i in range(n):
        msg = message(i)
        conv = open_conversation(new_id("c"), msg, "support", T0, POLICY).conversation
        rows.append((conv, msg))
    started = time.perf_counter()
    for conv, msg in rows:
        blob = encode(conv)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO conversations (id, channel, address, state, queue, agent, version,"
            " queued_at, updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conv.id,
                conv.channel,
                conv.contact.address,
                "waiting",
                "support",
                None,
                1,
                micros(conv.queued_at),
                micros(clock.now()),
                blob,
            ),
        )
        conn.execute(
            "INSERT INTO messages (id, conversation_id, channel, address, provider_message_id,"
            " data) VALUES (?, ?, ?, ?, ?, ?)",
            (
                new_id("m"),
                conv.id,
                msg.channel,
                msg.contact.address,
                msg.provider_message_id,
                encode(msg),
            ),
        )
        conn.execute("INSERT INTO events (data) VALUES (?)", (blob,))
        conn.execute("INSERT INTO events (data) VALUES (?)", (blob,))
        conn.execute(
            "INSERT INTO deadlines (target, kind, due_at) VALUES (?, 'window', ?)",
            ("conversation:" + conv.id, micros(T0 + timedelta(hours=24))),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


async def ingest_rate(path: Path, n: int, concurrency: int) -> float:
    store = SqliteStore(path)
    await store.open()
    clock = ManualClock(T0)
    ingest = Ingestor(store, clock, lambda m: "support", lambda c: POLICY)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await ingest.message(message(queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await store.close()
    return n / elapsed


async def seed_due(path: Path, m: int) -> None:
    store = SqliteStore(path)
    await store.open()
    convs = [
        open_conversation(new_id("c"), message(i), "support", T0, POLICY).conversation
        for i in range(m)
    ]

    def job(conn: sqlite3.Connection) -> None:
        from gateway.store.sqlite import _insert_conversation

        for conv in convs:
            _insert_conversation(conn, conv)

    for start in range(0, m, 5000):
        chunk = convs[start : start + 5000]
        await store._write(lambda c, chunk=chunk: [job_one(c, x) for x in chunk])
    await store.close()


def job_one(conn: sqlite3.Connection, conv: object) -> None:
    from gateway.store.sqlite import _insert_conversation

    _insert_conversation(conn, conv)  # type: ignore[arg-type]


async def sweep_rate(path: Path, m: int) -> float:
    store = SqliteStore(path)
    await store.open()
    clock = ManualClock(T0 + timedelta(hours=24))
    directory = Directory(channels={"wa-main": POLICY}, queues={"support": QueueInfo("support")})
    handler = DeadlineHandler(store, clock, directory)
    scheduler = Scheduler(store, clock, handler, batch=2000, batch_handler=handler.batch)
    started = time.perf_counter()
    fired = await scheduler.run_once()
    elapsed = time.perf_counter() - started
    assert fired == m, (fired, m)
    await store.close()
    return m / elapsed


def bare_sweep(path: Path, m: int) -> float:
    """The same state change as raw UPDATEs in one transaction (no claim, no CAS, no events)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    ids = [row[0] for row in conn.execute("SELECT id FROM conversations")]
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for conv_id in ids:
        conn.execute(
            "UPDATE conversations SET state = 'waiting', version = version + 1 WHERE id = ?",
            (conv_id,),
        )
        conn.execute("DELETE FROM deadlines WHERE target = ?", ("conversation:" + conv_id,))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(ids) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--deadlines", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bare = bare_loop(base / "bare.db", args.messages)
        ours = asyncio.run(ingest_rate(base / "ingest.db", args.messages, args.concurrency))
        print(f"ingest  {args.messages} msgs, {args.concurrency} concurrent callers")
        print(f"  bare SQLite loop (commit per message): {bare:10.0f} msg/s   1.00x")
        print(f"  gateway ingest (group commit)        : {ours:10.0f} msg/s   {ours / bare:.2f}x")
        asyncio.run(seed_due(base / "sweep.db", args.deadlines))
        import shutil

        shutil.copy(base / "sweep.db", base / "sweep-bare.db")
        rate = asyncio.run(sweep_rate(base / "sweep.db", args.deadlines))
        bare_rate = bare_sweep(base / "sweep-bare.db", args.deadlines)
        print(f"timer sweep  {args.deadlines} due deadlines")
        print(f"  bare UPDATE loop (one transaction)   : {bare_rate:10.0f} /s      1.00x")
        print(
            f"  scheduler (claim, lifecycle, CAS)    : {rate:10.0f} /s      {rate / bare_rate:.2f}x"
        )


if __name__ == "__main__":
    main()
