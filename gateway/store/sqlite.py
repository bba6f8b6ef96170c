"""The embedded store: one SQLite file in WAL mode, group-committed writes.

Every state change is one write job run by `GroupCommitWriter` inside a transaction: the
conversation row (compare-and-set on its version), its deadline rows, its messages and the event
log entries it produced are committed together. A partial unique index enforces "one open
conversation per contact per channel" and another the message dedup key, so even a bug above
cannot break either invariant. Reads use a second connection on its own thread; WAL lets them
run beside the writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from gateway.codec import (
    decode_conversation,
    decode_event,
    decode_message,
    decode_status,
    encode,
    remember_conversation,
)
from gateway.errors import NotFound, StoreUnavailable, TransitionError, VersionConflict
from gateway.lifecycle import Transition, deadlines_of
from gateway.model import (
    DELIVERY_RANK,
    Conversation,
    DeliveryStatus,
    Event,
    InboundMessage,
    Message,
    State,
    dumps_event,
    evolve,
    parse_iso,
    status_moves_forward,
    with_status,
)
from gateway.store.base import (
    DELIVER_KIND,
    GRACE_KIND,
    HEALTH_PROBE_KEY,
    AgentPresence,
    Deadline,
    IngestPlanner,
    IngestResult,
    ListPosition,
    OutboundResult,
    StatusResult,
    agent_target,
    conversation_target,
    message_target,
    next_version,
    stamp_version,
)
from gateway.store.sqlite_files import DatabaseFiles, FilesGone
from gateway.store.sqlite_writer import LOCK_WAIT, GroupCommitWriter

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    agent TEXT,
    version INTEGER NOT NULL,
    queued_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_one_open
    ON conversations(channel, address) WHERE state IN ('waiting', 'active', 'pending');
CREATE INDEX IF NOT EXISTS conversations_by_state
    ON conversations(state, queue, queued_at, id);
CREATE INDEX IF NOT EXISTS conversations_by_assigned_agent
    ON conversations(agent, state) WHERE agent IS NOT NULL;
CREATE INDEX IF NOT EXISTS conversations_closed_by_update
    ON conversations(queue, updated_at, id) WHERE state = 'closed';
CREATE INDEX IF NOT EXISTS conversations_inactive_by_update
    ON conversations(queue, updated_at, id) WHERE state = 'inactive';
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    provider_message_id TEXT,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup
    ON messages(channel, provider_message_id) WHERE provider_message_id IS NOT NULL;
-- A conversation's and a contact's messages in the order they were stored: an index holds
-- the rowid after its columns, and rowids grow with each insert (messages are never deleted).
CREATE INDEX IF NOT EXISTS messages_in_conversation ON messages(conversation_id);
CREATE INDEX IF NOT EXISTS messages_of_contact ON messages(channel, address);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deadlines (
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    lease_node TEXT,
    PRIMARY KEY (target, kind)
);
CREATE INDEX IF NOT EXISTS deadlines_due ON deadlines(due_at);
CREATE TABLE IF NOT EXISTS presence (
    agent TEXT NOT NULL,
    connection TEXT NOT NULL,
    node TEXT NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (agent, connection)
);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    alive_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_seen (
    agent TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orphan_statuses (
    channel TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS orphan_statuses_by_id
    ON orphan_statuses(channel, provider_message_id);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

MAX_ORPHANS = 10_000
PROBE_INTERVAL = 0.1
RECENT_EVENTS = 5_000
OPEN_SQL = "('waiting', 'active', 'pending')"


def micros(dt: datetime) -> int:
    """Store times as integer microseconds since the epoch: exact and ordered."""
    return int(dt.timestamp() * 1_000_000)


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def path_from_url(url: str) -> str:
    """Map `sqlite:///relative.db`, `sqlite:////abs.db` and `sqlite:///:memory:` to a path."""
    if not url.startswith("sqlite:///"):
        raise ValueError("a SQLite store url starts with sqlite:///")
    return url[len("sqlite:///") :]


WRITE_PROBE_AFTER = 5.0
"""Seconds after a failed write before `ping` tries a write of its own."""
MIN_FREE_BYTES = 8 * 1024 * 1024
"""Free space on the database's file system below which, after a failed write, the store is
not ready (and no probe is tried)."""


def _free_bytes(path: str) -> int:
    """Free bytes on the file system holding `path` (0 if it cannot be told)."""
    try:
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return 0


class SqliteStore:
    """The Store Protocol on one SQLite file (see module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        probe_interval: float = PROBE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        free_bytes: Callable[[str], int] | None = None,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.probe_interval = probe_interval
        """How long the in-memory tail of the log is trusted without asking the file whether
        another process (a CLI command on the same file) appended since (see _recent_after)."""
        self._monotonic = monotonic
        self._free_bytes = free_bytes or _free_bytes
        self._probed_at: float | None = None
        self._writer: GroupCommitWriter | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._reader: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events_changed: asyncio.Event | None = None
        # The newest committed events, so the hub and live streams read the log's tail without
        # a query and without decoding (filled by the writer thread in commit order).
        self._recent: collections.deque[Event] = collections.deque(maxlen=RECENT_EVENTS)
        self._recent_lock = threading.Lock()
        self._probe: sqlite3.Connection | None = None
        self._health: sqlite3.Connection | None = None
        """`ping`'s own connection, read from a thread of its own: behind the reader's queue
        a busy node's readiness read waited its turn, and /readyz said the store was down."""
        self._ephemeral: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        self._files = DatabaseFiles(self.path)
        self._write_failed_at: float | None = None
        """When the last write found the database unavailable (a full disk, the lock held);
        None once a write succeeded since. Reads alone still work then: see `ping`."""

    @classmethod
    def from_url(cls, url: str, *, synchronous: str = "full") -> SqliteStore:
        return cls(path_from_url(url), synchronous=synchronous)

    # lifecycle ---------------------------------------------------------------------------------
    def _connect(
        self, factory: type[sqlite3.Connection] = sqlite3.Connection
    ) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, factory=factory
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
        # Statement journals (what a SAVEPOINT or a failing statement rolls back to) and sort
        # scratch space in memory: on disk they were several times the WAL's own writes.
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect(factory=_WriterConnection)
        conn.executescript(SCHEMA)
        # Indexes of older databases that every insert paid for: one no query used, and one
        # on agent that also indexed every unassigned (waiting) conversation.
        conn.execute("DROP INDEX IF EXISTS conversations_by_contact")
        conn.execute("DROP INDEX IF EXISTS conversations_by_agent")
        # Messages were listed by id, which is not the order they were stored in (see
        # `list_contact_messages`): the indexes by id went with that.
        conn.execute("DROP INDEX IF EXISTS messages_by_conversation")
        conn.execute("DROP INDEX IF EXISTS messages_by_contact")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(deadlines)")}
        if "lease_node" not in columns:  # a database created before leases named their node
            conn.execute("ALTER TABLE deadlines ADD COLUMN lease_node TEXT")
        self._files.check()  # the files as opened (the schema's write made the log)
        return conn

    async def open(self) -> None:
        if self.path == ":memory:":
            raise ValueError("the SQLite store needs a file (WAL does not work in memory)")
        self._loop = asyncio.get_running_loop()
        self._events_changed = asyncio.Event()
        self._writer = GroupCommitWriter(
            self._connect_writer,
            self._committed,
            lock_wait=LOCK_WAIT,
            before_batch=self._files.check,
        )
        await asyncio.to_thread(self._writer.start)
        self._probe = self._connect()
        self._health = self._connect()
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._reader = await self._loop.run_in_executor(self._reader_pool, self._connect)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._health is not None:
            self._health.close()
            self._health = None
        with self._recent_lock:
            self._recent.clear()
        if self._reader_pool is not None:
            reader = self._reader
            if reader is not None:
                await asyncio.get_running_loop().run_in_executor(self._reader_pool, reader.close)
            self._reader_pool.shutdown(wait=True)
            self._reader_pool = None
            self._reader = None

    def _committed(self, conn: sqlite3.Connection, committed: bool) -> None:
        """Writer thread, after each batch: keep the committed events in memory, wake readers."""
        encoded = getattr(conn, "encoded", None)
        if encoded is not None:
            encoded.clear()
        notes = getattr(conn, "notes", None)
        if committed and notes:
            with self._recent_lock:
                first = notes[0]
                if (
                    self._recent
                    and _cursor_seq(first.cursor) != _cursor_seq(self._recent[-1].cursor) + 1
                ):
                    self._recent.clear()  # another process wrote in between: trust only the file
                    self._probed_at = None
                self._recent.extend(notes)
        loop, changed = self._loop, self._events_changed
        if loop is not None and changed is not None and not loop.is_closed():
            loop.call_soon_threadsafe(changed.set)

    def _recent_after(self, start: int, limit: int) -> list[Event] | None:
        """Serve a read of the log's tail from memory; None when memory does not cover it.

        Memory covers it when it holds every event after `start` up to the file's newest one;
        the probe (an indexed max, at most once per `probe_interval`) tells if another process
        wrote since.
        """
        probe = self._probe
        if probe is None:
            return None
        with self._recent_lock:
            if not self._recent:
                return None
            first = _cursor_seq(self._recent[0].cursor)
            last = _cursor_seq(self._recent[-1].cursor)
            if start < first - 1:
                return None
            now = self._monotonic()
            probed = self._probed_at
            if probed is None or now - probed >= self.probe_interval:
                # A read transaction on the file: tens to hundreds of microseconds on the event
                # loop, so at most once per interval. In between, memory is still the whole
                # log unless another process appended after our newest event; our own commits
                # notice any append before theirs (see _committed), so at worst another
                # process's newest events show up one interval late, never out of order.
                (newest,) = probe.execute("SELECT max(seq) FROM events").fetchone()
                if newest != last:
                    self._probed_at = None
                    return None
                self._probed_at = now
            # The wanted events are the newest ones: walk in from the right end (a deque is
            # indexed in linear time, so slicing from the left would cost the whole ring).
            newer = last - start
            if newer <= 0:
                return []
            tail = list(itertools.islice(reversed(self._recent), newer))
            tail.reverse()
            return tail[:limit]

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None:
            raise RuntimeError("store is not open")
        if self._write_failed_at is not None:
            return await self._write_after_failure(fn)
        try:
            with _unavailable_as_store_error():
                return await self._writer.run(fn)
        except StoreUnavailable:
            self._write_failed_at = self._monotonic()
            raise

    async def _write_after_failure(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A write while the store is believed down. Only one that stored something, with room
        left on the disk, shows that it takes writes again: a job that changed no row (the
        scheduler's idle sweep, every second) commits an empty transaction even on a full disk,
        and a small row can fit where a message does not."""

        def counted(conn: sqlite3.Connection) -> tuple[T, bool]:
            before = conn.total_changes
            return fn(conn), conn.total_changes != before

        assert self._writer is not None
        try:
            with _unavailable_as_store_error():
                result, changed = await self._writer.run(counted)
        except StoreUnavailable:
            self._write_failed_at = self._monotonic()
            raise
        if changed and self._free_bytes(self.path) >= MIN_FREE_BYTES:
            self._write_failed_at = None
        return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_pool is None or self._reader is None:
            raise RuntimeError("store is not open")
        reader = self._reader
        with _unavailable_as_store_error():
            return await asyncio.get_running_loop().run_in_executor(
                self._reader_pool, lambda: fn(reader)
            )

    async def ping(self) -> bool:
        return await self.problem() is None

    async def problem(self) -> str | None:
        """The store answers and takes writes. Reads still work on a full disk: after a
        failed write it is down until a write succeeds. Writes keep failing while traffic
        keeps coming; without traffic, a small write probes once `WRITE_PROBE_AFTER` passed
        (a small row may fit where a message does not, so a fresh failure is believed)."""
        health = self._health
        if health is None:
            return "unreachable"
        try:
            self._files.check()  # now, not at the next write: readiness must not lag behind
        except FilesGone:
            return "files_gone"

        def read() -> None:
            with _unavailable_as_store_error():
                health.execute("SELECT count(*) FROM sqlite_master").fetchone()

        try:
            await asyncio.to_thread(read)
        except Exception:
            return "unreachable"
        failed_at = self._write_failed_at
        if failed_at is None:
            return None
        if self._monotonic() - failed_at < WRITE_PROBE_AFTER:
            return "writes_failing"
        # A small write can succeed on a full file system (the log reuses its own space):
        # only probe once there is room for more than that.
        try:
            if self._free_bytes(self.path) < MIN_FREE_BYTES:
                return "writes_failing"
            await self.kv_set(HEALTH_PROBE_KEY, str(time.time()))
        except Exception:
            return "writes_failing"
        return None

    # conversations -----------------------------------------------------------------------------
    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        return await self._read(lambda c: _get_conversation(c, conversation_id))

    async def get_conversations(self, conversation_ids: Collection[str]) -> dict[str, Conversation]:
        ids = list(conversation_ids)

        def query(conn: sqlite3.Connection) -> dict[str, Conversation]:
            found: dict[str, Conversation] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = conn.execute(
                    f"SELECT data FROM conversations WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                for (data,) in rows:
                    conversation = decode_conversation(data)
                    found[conversation.id] = conversation
            return found

        return await self._read(query)

    async def find_open_conversation(self, channel: str, address: str) -> Conversation | None:
        return await self._read(lambda c: _open_conversation(c, channel, address))

    async def list_conversations(
        self,
        state: State,
        *,
        queues: Collection[str] | None = None,
        agent: str | None = None,
        limit: int = 200,
        after: ListPosition | None = None,
    ) -> list[Conversation]:
        waiting = state == State.WAITING
        order = "queued_at, id" if waiting else "updated_at DESC, id DESC"
        past = "(queued_at, id) > (?, ?)" if waiting else "(updated_at, id) < (?, ?)"

        def rows(conn: sqlite3.Connection, queue: str | None) -> list[tuple[Any, ...]]:
            # The state is written into the statement, not bound: only then can SQLite use the
            # partial indexes of closed and inactive conversations (one queue at a time, in
            # index order), instead of sorting every one of them on each request.
            sql = "SELECT queued_at, updated_at, id, data FROM conversations"
            sql += f" WHERE state = '{state}'"
            args: list[Any] = []
            if queue is not None:
                sql += " AND queue = ?"
                args.append(queue)
            if agent is not None:
                sql += " AND agent = ?"
                args.append(agent)
            if after is not None:
                sql += f" AND {past}"
                args.extend(after)
            sql += f" ORDER BY {order} LIMIT ?"
            args.append(limit)
            return conn.execute(sql, args).fetchall()

        def query(conn: sqlite3.Connection) -> list[Conversation]:
            if queues is None:
                found = rows(conn, None)
            else:
                # Each queue's first `limit` in order, merged: the history of closed ones grows
                # without end, and a query over several queues at once would sort all of it.
                per_queue = [rows(conn, queue) for queue in sorted(set(queues))]
                if waiting:
                    merged = heapq.merge(*per_queue, key=lambda r: (r[0], r[2]))
                else:
                    merged = heapq.merge(*per_queue, key=lambda r: (r[1], r[2]), reverse=True)
                found = list(itertools.islice(merged, limit))
            return [decode_conversation(row[3]) for row in found]

        return await self._read(query)

    async def count_by_state(self, *, agent: str | None = None) -> dict[tuple[str, str], int]:
        def query(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            if agent is None:
                rows = conn.execute(
                    "SELECT state, queue, count(*) FROM conversations GROUP BY state, queue"
                )
            else:  # by the index of assigned conversations; open ones only (see the Protocol)
                rows = conn.execute(
                    "SELECT state, queue, count(*) FROM conversations WHERE agent = ?"
                    f" AND state IN {OPEN_SQL} GROUP BY state, queue",
                    (agent,),
                )
            return {(state, queue): count for state, queue, count in rows}

        return await self._read(query)

    async def agent_loads(self) -> dict[str, int]:
        def query(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT agent, count(*) FROM conversations"
                " WHERE state = 'active' AND agent IS NOT NULL GROUP BY agent"
            )
            return dict(rows.fetchall())

        return await self._read(query)

    async def update_conversation(
        self,
        transition: Transition,
        expected_version: int,
        *,
        max_active: int | None = None,
    ) -> tuple[Conversation, tuple[Event, ...]]:
        def job(conn: sqlite3.Connection) -> tuple[Conversation, tuple[Event, ...]]:
            new = transition.conversation
            if max_active is not None and new.state == State.ACTIVE and new.agent:
                (load,) = conn.execute(
                    "SELECT count(*) FROM conversations"
                    " WHERE state = 'active' AND agent = ? AND id != ?",
                    (new.agent, new.id),
                ).fetchone()
                if load >= max_active:
                    raise TransitionError(
                        "max_active_reached",
                        f"agent {new.agent} already has {load} active conversations",
                    )
            version = next_version(transition, expected_version)
            stored = _cas_conversation(conn, new, expected_version, version)
            events = _append_events(conn, stamp_version(transition.events, stored))
            return stored, events

        return await self._write(job)

    async def update_conversations(
        self, items: Sequence[tuple[Transition, int]]
    ) -> list[tuple[Conversation, tuple[Event, ...]] | VersionConflict]:
        def job(
            conn: sqlite3.Connection,
        ) -> list[tuple[Conversation, tuple[Event, ...]] | VersionConflict]:
            results: list[tuple[Conversation, tuple[Event, ...]] | VersionConflict] = []
            for transition, expected_version in items:
                conn.execute("SAVEPOINT item")
                try:
                    version = next_version(transition, expected_version)
                    stored = _cas_conversation(
                        conn, transition.conversation, expected_version, version
                    )
                    events = _append_events(conn, stamp_version(transition.events, stored))
                except VersionConflict as conflict:
                    conn.execute("ROLLBACK TO item")
                    results.append(conflict)
                else:
                    results.append((stored, events))
                conn.execute("RELEASE item")
            return results

        return await self._write(job)

    # messages ----------------------------------------------------------------------------------
    async def ingest(self, inbound: InboundMessage, planner: IngestPlanner) -> IngestResult:
        def job(conn: sqlite3.Connection) -> IngestResult:
            # The dedup lookup and the open-conversation lookup in one statement.
            duplicate, open_data = conn.execute(
                "SELECT (SELECT data FROM messages"
                " WHERE channel = ?1 AND provider_message_id = ?2),"
                " (SELECT data FROM conversations"
                f" WHERE channel = ?1 AND address = ?3 AND state IN {OPEN_SQL})",
                (inbound.channel, inbound.provider_message_id, inbound.contact.address),
            ).fetchone()
            if duplicate is not None:
                existing = decode_message(duplicate)
                conversation = _get_conversation(conn, existing.conversation_id)
                if conversation is None:
                    raise NotFound("the duplicate's conversation is missing")
                return IngestResult(True, existing, conversation)
            open_conv = None if open_data is None else decode_conversation(open_data)
            thread_conv = _thread_conversation(conn, inbound.channel, inbound.thread_refs)
            plan = planner(open_conv, thread_conv)
            transition = plan.transition
            conversation = transition.conversation
            if transition.changed:
                if open_conv is not None and open_conv.id == conversation.id:
                    conversation = _cas_conversation(conn, conversation, open_conv.version)
                elif thread_conv is not None and thread_conv.id == conversation.id:
                    conversation = _cas_conversation(conn, conversation, thread_conv.version)
                else:
                    conversation = _insert_conversation(conn, conversation)
            message = plan.message
            _insert_message(conn, message, conversation.contact.address)
            received = Event(
                type="message.received",
                at=message.received_at,
                conversation=conversation,
                message=message,
            )
            events = _append_events(
                conn, (*stamp_version(transition.events, conversation), received)
            )
            return IngestResult(False, message, conversation, events, transition.distribute)

        return await self._write(job)

    async def add_outbound(
        self,
        transition: Transition,
        expected_version: int,
        message: Message,
        idempotency_key: str | None,
        deliver_by: datetime | None = None,
    ) -> OutboundResult:
        def job(conn: sqlite3.Connection) -> OutboundResult:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT message_id FROM idempotency WHERE scope = ? AND key = ?",
                    (message.conversation_id, idempotency_key),
                ).fetchone()
                if row is not None:
                    previous = _get_message(conn, row[0])
                    conversation = _get_conversation(conn, message.conversation_id)
                    if previous is None or conversation is None:
                        raise NotFound("the idempotent message is missing")
                    return OutboundResult(previous, False, conversation)
                conn.execute(
                    "INSERT INTO idempotency (scope, key, message_id) VALUES (?, ?, ?)",
                    (message.conversation_id, idempotency_key, message.id),
                )
            conversation = _cas_conversation(conn, transition.conversation, expected_version)
            _insert_message(conn, message, conversation.contact.address)
            if deliver_by is not None:
                _set_deadline(conn, message_target(message.id), DELIVER_KIND, deliver_by)
            sent = Event(
                type="message.sent",
                at=message.received_at,
                conversation=conversation,
                message=message,
            )
            events = _append_events(conn, (*stamp_version(transition.events, conversation), sent))
            return OutboundResult(message, True, conversation, events)

        return await self._write(job)

    async def find_idempotent(self, conversation_id: str, key: str) -> Message | None:
        def query(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(
                "SELECT message_id FROM idempotency WHERE scope = ? AND key = ?",
                (conversation_id, key),
            ).fetchone()
            return None if row is None else _get_message(conn, row[0])

        return await self._read(query)

    async def record_send(
        self,
        message_id: str,
        *,
        provider_message_id: str | None,
        status: DeliveryStatus | None,
    ) -> StatusResult:
        def job(conn: sqlite3.Connection) -> StatusResult:
            message = _get_message(conn, message_id)
            if message is None:
                return StatusResult(None, False)
            if provider_message_id and message.provider_message_id != provider_message_id:
                message = evolve(message, provider_message_id=provider_message_id)
                conn.execute(
                    "UPDATE messages SET provider_message_id = ?, data = ? WHERE id = ?",
                    (provider_message_id, encode(message), message.id),
                )
            result = StatusResult(message, True)
            if status is not None:
                result = _apply_status(conn, message, status)
            if provider_message_id:
                # Reports that arrived before the send returned the provider's id.
                early_reports = _take_orphans(conn, message.channel, provider_message_id)
                for early in early_reports:
                    applied = _apply_status(conn, result.message or message, early)
                    if applied.moved:
                        result = applied
                if any(early.closes_window for early in early_reports):
                    result = evolve(result, closes_window=True)
            return result

        return await self._write(job)

    async def apply_status(self, status: DeliveryStatus) -> StatusResult:
        def job(conn: sqlite3.Connection) -> StatusResult:
            message = _message_by_provider_id(conn, status.channel, status.provider_message_id)
            if message is None:
                # Perhaps the send has not returned its id yet: keep it for record_send.
                cursor = conn.execute(
                    "INSERT INTO orphan_statuses (channel, provider_message_id, data)"
                    " VALUES (?, ?, ?)",
                    (status.channel, status.provider_message_id, encode(status)),
                )
                # Reports for sends that never return their id must not pile up forever.
                conn.execute(
                    "DELETE FROM orphan_statuses WHERE rowid <= ?",
                    ((cursor.lastrowid or 0) - MAX_ORPHANS,),
                )
                return StatusResult(None, False)
            return _apply_status(conn, message, status)

        return await self._write(job)

    async def get_message(self, message_id: str) -> Message | None:
        return await self._read(lambda c: _get_message(c, message_id))

    async def find_message(self, channel: str, provider_message_id: str) -> Message | None:
        return await self._read(lambda c: _message_by_provider_id(c, channel, provider_message_id))

    async def list_recent_messages(
        self, conversation_id: str, *, before: str | None = None, limit: int = 1000
    ) -> list[Message]:
        def query(conn: sqlite3.Connection) -> list[Message]:
            if before is None:
                rows = conn.execute(
                    "SELECT data FROM messages WHERE conversation_id = ?"
                    " ORDER BY rowid DESC LIMIT ?",
                    (conversation_id, limit),
                )
            else:  # nothing precedes a message that is not this conversation's
                rows = conn.execute(
                    "SELECT data FROM messages WHERE conversation_id = ?1 AND rowid <"
                    " (SELECT rowid FROM messages WHERE id = ?2 AND conversation_id = ?1)"
                    " ORDER BY rowid DESC LIMIT ?3",
                    (conversation_id, before, limit),
                )
            return [decode_message(row[0]) for row in reversed(rows.fetchall())]

        return await self._read(query)

    async def list_contact_messages(
        self, channel: str, address: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Message]:
        # In the order they were stored, which is the order they were pushed live (the event
        # log's), not by id: an id is made before the write, and a reader resuming after the
        # message it saw last must not skip one stored after it with a smaller id.
        def query(conn: sqlite3.Connection) -> list[Message]:
            if after is None:
                rows = conn.execute(
                    "SELECT data FROM messages WHERE channel = ? AND address = ?"
                    " ORDER BY rowid LIMIT ?",
                    (channel, address, limit),
                )
            else:  # nothing follows a message that is not this contact's
                rows = conn.execute(
                    "SELECT data FROM messages WHERE channel = ?1 AND address = ?2 AND rowid >"
                    " (SELECT rowid FROM messages WHERE id = ?3 AND channel = ?1 AND address = ?2)"
                    " ORDER BY rowid LIMIT ?4",
                    (channel, address, after, limit),
                )
            return [decode_message(row[0]) for row in rows]

        return await self._read(query)

    # event log ---------------------------------------------------------------------------------
    async def read_events(self, after: str | None, limit: int = 500) -> list[Event]:
        start = _cursor_seq(after)
        recent = self._recent_after(start, limit)
        if recent is not None:
            return recent

        def query(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            )
            return [decode_event(data, _cursor(seq)) for seq, data in rows]

        return await self._read(query)

    async def wait_events(self, after: str | None, timeout: float) -> list[Event]:
        changed = self._events_changed
        if changed is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed.clear()
            events = await self.read_events(after)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            try:
                # Not asyncio.wait_for: on 3.11 it swallows a cancellation that races with the
                # event being set, and the event hub could then never be stopped.
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return await self.read_events(after)

    async def publish_ephemeral(self, event: Event) -> None:
        self._ephemeral.put_nowait(event)  # one process: its own hub is every hub

    async def ephemeral_events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._ephemeral.get()

    async def last_cursor(self) -> str | None:
        def query(conn: sqlite3.Connection) -> str | None:
            # The newest number the log ever handed out (AUTOINCREMENT keeps it), not the
            # newest row: after retention deleted every event, their cursors are still this
            # log's, and reading after them waits for the next one.
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            return None if row is None or not row[0] else _cursor(row[0])

        return await self._read(query)

    async def prune_events(self, before: datetime, limit: int) -> int:
        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            """How many went, and the sequence number every event below is gone to."""
            lowest, highest = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
            if lowest is None:
                return 0, 0
            # The first event at or after `before`, by bisecting the sequence (events are
            # appended in time order): a few indexed reads, no scan of the whole log. Only
            # events stamped with our own clock are probed: a delivery report's time is the
            # provider's (a day old for a late re-delivery, or ahead), so one could make the
            # bisect delete everything logged before it. Reports go with their neighbours.
            left, right = lowest, highest + 1
            while left < right:
                middle = (left + right) // 2
                found = conn.execute(
                    "SELECT seq, json_extract(data, '$.at') FROM events WHERE seq >= ?"
                    " AND json_extract(data, '$.type') != 'message.status'"
                    " ORDER BY seq LIMIT 1",
                    (middle,),
                ).fetchone()
                if found is None:  # only reports from here on: they end with the log
                    right = middle
                    continue
                seq, at = found
                stamped = parse_iso(at)
                if stamped is not None and stamped < before:
                    left = seq + 1
                else:
                    right = middle
            end = min(left, lowest + limit)
            return conn.execute("DELETE FROM events WHERE seq < ?", (end,)).rowcount, end

        deleted, end = await self._write(job)
        if deleted:
            with self._recent_lock:  # memory must not serve what the file no longer has
                while self._recent and _cursor_seq(self._recent[0].cursor) < end:
                    self._recent.popleft()
        return deleted

    async def events_missed(self, after: str | None) -> bool:
        reading_from = _cursor_seq(after) + 1

        def query(conn: sqlite3.Connection) -> bool:
            # Sequence numbers have no holes (a rolled back insert gives its number back), so
            # the log is whole after `after` exactly when its oldest event is the next one.
            # Empty, it is whole only if nothing was handed out past `after`.
            oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
            if oldest is None:
                row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
                issued = row.fetchone()
                oldest = (issued[0] if issued else 0) + 1
            return bool(oldest > reading_from)

        return await self._read(query)

    async def cursor_issued(self, cursor: str) -> bool:
        try:
            if len(cursor) != CURSOR_DIGITS or _cursor_seq(cursor) < 1:  # the log starts at 1
                return False
        except ValueError:
            return False
        newest = await self.last_cursor()
        return newest is not None and cursor <= newest  # same width: string order is log order

    # deadlines ---------------------------------------------------------------------------------
    async def claim_due(
        self, now: datetime, limit: int, lease: timedelta, node: str | None = None
    ) -> list[Deadline]:
        now_us, lease_until = micros(now), micros(now + lease)

        def job(conn: sqlite3.Connection) -> list[Deadline]:
            rows = conn.execute(
                "SELECT target, kind, due_at FROM deadlines"
                " WHERE due_at <= ? AND lease_until <= ? ORDER BY due_at LIMIT ?",
                (now_us, now_us, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deadlines SET lease_until = ?, lease_node = ?"
                " WHERE target = ? AND kind = ?",
                [(lease_until, node, target, kind) for target, kind, _ in rows],
            )
            return [Deadline(t, k, from_micros(d)) for t, k, d in rows]

        return await self._write(job)

    async def set_deadline(self, target: str, kind: str, due_at: datetime) -> None:
        await self._write(lambda c: _set_deadline(c, target, kind, due_at))

    async def clear_deadline(self, target: str, kind: str, due_at: datetime | None = None) -> None:
        def job(conn: sqlite3.Connection) -> None:
            if due_at is None:
                conn.execute("DELETE FROM deadlines WHERE target = ? AND kind = ?", (target, kind))
            else:
                conn.execute(
                    "DELETE FROM deadlines WHERE target = ? AND kind = ? AND due_at = ?",
                    (target, kind, micros(due_at)),
                )

        await self._write(job)

    async def next_due(self) -> datetime | None:
        def query(conn: sqlite3.Connection) -> datetime | None:
            (due,) = conn.execute("SELECT min(max(due_at, lease_until)) FROM deadlines").fetchone()
            return None if due is None else from_micros(due)

        return await self._read(query)

    # presence ----------------------------------------------------------------------------------
    async def presence_connect(self, agent: str, connection: str, node: str, now: datetime) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO presence (agent, connection, node, since)"
                " VALUES (?, ?, ?, ?)",
                (agent, connection, node, micros(now)),
            )
            conn.execute(
                "DELETE FROM deadlines WHERE target = ? AND kind = ?",
                (agent_target(agent), GRACE_KIND),
            )

        await self._write(job)

    async def presence_disconnect(
        self, agent: str, connection: str, now: datetime, grace: timedelta
    ) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM presence WHERE agent = ? AND connection = ?", (agent, connection)
            )
            return _mark_offline_if_last(conn, agent, now, grace)

        return await self._write(job)

    async def presence_drop_node(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        return await self._write(lambda c: _forget_nodes(c, [node], now, grace))

    async def node_heartbeat(self, node: str, now: datetime, ttl: timedelta) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT alive_until FROM nodes WHERE node = ?", (node,)).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO nodes (node, alive_until) VALUES (?, ?)",
                (node, micros(now + ttl)),
            )
            return row is not None and row[0] > micros(now)

        return await self._write(job)

    async def reap_nodes(self, now: datetime, grace: timedelta) -> list[str]:
        def job(conn: sqlite3.Connection) -> list[str]:
            dead = [
                row[0]
                for row in conn.execute(
                    "SELECT node FROM nodes WHERE alive_until <= ?", (micros(now),)
                )
            ]
            return _forget_nodes(conn, dead, now, grace) if dead else []

        return await self._write(job)

    async def presence_startup(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        """Embedded store: one process, so every connection recorded before it started is gone.

        Only agents who had a connection then get the grace deadline: an agent who works over
        REST alone never had one, and a restart must not set their conversations pending when
        nothing else ever would (README).
        """

        def job(conn: sqlite3.Connection) -> list[str]:
            agents = {row[0] for row in conn.execute("SELECT DISTINCT agent FROM presence")}
            conn.execute("DELETE FROM presence")
            # Leases of the previous run's schedulers: nobody is handling those any more.
            conn.execute(
                "UPDATE deadlines SET lease_until = 0, lease_node = NULL"
                " WHERE lease_node IS NOT NULL AND lease_node != ?",
                (node,),
            )
            conn.execute("DELETE FROM nodes WHERE node != ?", (node,))
            return [a for a in sorted(agents) if _mark_offline_if_last(conn, a, now, grace)]

        return await self._write(job)

    async def presence(self) -> dict[str, AgentPresence]:
        def query(conn: sqlite3.Connection) -> dict[str, AgentPresence]:
            result: dict[str, AgentPresence] = {}
            for agent, last_seen in conn.execute("SELECT agent, last_seen FROM agent_seen"):
                result[agent] = AgentPresence(False, from_micros(last_seen))
            for (agent,) in conn.execute("SELECT DISTINCT agent FROM presence"):
                previous = result.get(agent)
                result[agent] = AgentPresence(True, previous.last_seen_at if previous else None)
            return result

        return await self._read(query)

    # key-value ---------------------------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(query)

    async def kv_set(self, key: str, value: str) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value)
            )
        )

    async def kv_compare_set(self, key: str, expected: str | None, value: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            current = None if row is None else row[0]
            if current != expected:
                return False
            conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
            return True

        return await self._write(job)


# SQLite's primary result codes for a database that cannot be used right now, as opposed to a
# bug (a bad statement): the disk is full or failing, the file went away or turned read-only,
# memory ran out, or another process held the write lock past busy_timeout (a backup, say).
# A damaged file (a copy written over the live database, a failing disk) is one too: no
# request can be served from it, and a 500 would say the fault is the gateway's.
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
}


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """Raise StoreUnavailable for an operational error about the database's availability (the
    reads and the writes alike); any other error goes on as it is."""
    try:
        yield
    except sqlite3.DatabaseError as exc:  # operational errors, and a damaged file's
        unavailable = _unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def _unavailable(exc: sqlite3.DatabaseError) -> StoreUnavailable | None:
    """The StoreUnavailable an operational error stands for (503: nothing acknowledged, retry
    later), or None when it is not about the database's availability."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _UNAVAILABLE_CODES:  # extended codes keep the primary
        return None
    return StoreUnavailable(f"the SQLite store is unavailable: {exc}")


# helpers run inside the reader or writer thread -------------------------------------------------


CURSOR_DIGITS = 16


def _cursor(seq: int) -> str:
    """Cursors are zero-padded (CURSOR_DIGITS) so that they order as strings like the log."""
    return f"{seq:016d}"


def _cursor_seq(cursor: str | None) -> int:
    """The sequence number of a cursor; ASCII digits only (`int` would take "-1", " 5", "1_0")."""
    if cursor is None or cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdigit()):
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(cursor)


def _get_conversation(conn: sqlite3.Connection, conversation_id: str) -> Conversation | None:
    row = conn.execute("SELECT data FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    return None if row is None else decode_conversation(row[0])


def _open_conversation(conn: sqlite3.Connection, channel: str, address: str) -> Conversation | None:
    row = conn.execute(
        f"SELECT data FROM conversations WHERE channel = ? AND address = ? AND state IN {OPEN_SQL}",
        (channel, address),
    ).fetchone()
    return None if row is None else decode_conversation(row[0])


def _thread_conversation(
    conn: sqlite3.Connection, channel: str, refs: Iterable[str]
) -> Conversation | None:
    """Return the newest conversation holding one of the referenced provider message ids."""
    ids = list(refs)
    if not ids:
        return None
    row = conn.execute(
        "SELECT conversation_id FROM messages WHERE channel = ? AND provider_message_id IN"
        f" ({','.join('?' * len(ids))}) ORDER BY conversation_id DESC LIMIT 1",
        (channel, *ids),
    ).fetchone()
    return None if row is None else _get_conversation(conn, row[0])


def _encoded(conn: sqlite3.Connection, value: Conversation | Message) -> bytes:
    """JSON of a conversation or message, made once per write batch (see `_WriterConnection`)."""
    cache: dict[int, tuple[object, bytes]] | None = getattr(conn, "encoded", None)
    if cache is None:
        return encode(value)
    hit = cache.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    data = encode(value)
    cache[id(value)] = (value, data)
    return data


def _conversation_row(conn: sqlite3.Connection, conversation: Conversation) -> tuple[Any, ...]:
    data = _encoded(conn, conversation)
    # The next message of this contact reads exactly these bytes back: decoding them is then
    # a lookup (harmless if this write rolls back: the bytes still mean this conversation).
    remember_conversation(data, conversation)
    return (
        conversation.channel,
        conversation.contact.address,
        str(conversation.state),
        conversation.queue,
        conversation.agent,
        conversation.version,
        micros(conversation.queued_at),
        micros(conversation.updated_at),
        data,
    )


def _insert_conversation(conn: sqlite3.Connection, conversation: Conversation) -> Conversation:
    # A planned conversation already carries version 1 (the model's default): keep the same
    # object, so the events that embed it need no copy either (see `stamp_version`).
    stored = conversation if conversation.version == 1 else evolve(conversation, version=1)
    conn.execute(
        "INSERT INTO conversations (channel, address, state, queue, agent, version, queued_at,"
        " updated_at, data, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*_conversation_row(conn, stored), stored.id),
    )
    # A new id has no deadline rows yet: write the wanted ones without looking first.
    target = conversation_target(stored.id)
    for kind, due in deadlines_of(stored).items():
        _set_deadline(conn, target, kind, due)
    return stored


def _cas_conversation(
    conn: sqlite3.Connection,
    conversation: Conversation,
    expected_version: int,
    version: int | None = None,
) -> Conversation:
    """Store `conversation` if it is still at `expected_version`, as `version` (by default
    the next one: see `next_version`)."""
    stored = evolve(conversation, version=expected_version + 1 if version is None else version)
    try:
        cursor = conn.execute(
            "UPDATE conversations SET channel = ?, address = ?, state = ?, queue = ?, agent = ?,"
            " version = ?, queued_at = ?, updated_at = ?, data = ? WHERE id = ? AND version = ?",
            (*_conversation_row(conn, stored), stored.id, expected_version),
        )
    except sqlite3.IntegrityError:
        raise VersionConflict("another open conversation exists for this contact") from None
    if cursor.rowcount != 1:
        raise VersionConflict(f"conversation {conversation.id} changed meanwhile")
    _sync_deadlines(conn, stored)
    return stored


def _sync_deadlines(conn: sqlite3.Connection, conversation: Conversation) -> None:
    target = conversation_target(conversation.id)
    wanted = deadlines_of(conversation)
    existing = {
        kind: due
        for kind, due in conn.execute(
            "SELECT kind, due_at FROM deadlines WHERE target = ?", (target,)
        )
    }
    for kind in existing.keys() - wanted.keys():
        conn.execute("DELETE FROM deadlines WHERE target = ? AND kind = ?", (target, kind))
    for kind, due in wanted.items():
        if existing.get(kind) != micros(due):
            _set_deadline(conn, target, kind, due)


def _set_deadline(conn: sqlite3.Connection, target: str, kind: str, due_at: datetime) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO deadlines (target, kind, due_at, lease_until) VALUES (?, ?, ?, 0)",
        (target, kind, micros(due_at)),
    )


def _mark_offline_if_last(
    conn: sqlite3.Connection, agent: str, now: datetime, grace: timedelta
) -> bool:
    (left,) = conn.execute("SELECT count(*) FROM presence WHERE agent = ?", (agent,)).fetchone()
    if left:
        return False
    conn.execute(
        "INSERT OR REPLACE INTO agent_seen (agent, last_seen) VALUES (?, ?)", (agent, micros(now))
    )
    _set_deadline(conn, agent_target(agent), GRACE_KIND, now + grace)
    return True


def _forget_nodes(
    conn: sqlite3.Connection, nodes: list[str], now: datetime, grace: timedelta
) -> list[str]:
    """Drop the connections, heartbeats and leases of dead nodes; return agents left offline."""
    marks = ",".join("?" * len(nodes))
    agents = [
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT agent FROM presence WHERE node IN ({marks}) ORDER BY agent", nodes
        )
    ]
    conn.execute(f"DELETE FROM presence WHERE node IN ({marks})", nodes)
    conn.execute(f"DELETE FROM nodes WHERE node IN ({marks})", nodes)
    conn.execute(
        f"UPDATE deadlines SET lease_until = 0, lease_node = NULL WHERE lease_node IN ({marks})",
        nodes,
    )
    return [a for a in agents if _mark_offline_if_last(conn, a, now, grace)]


def _insert_message(conn: sqlite3.Connection, message: Message, address: str) -> None:
    conn.execute(
        "INSERT INTO messages (id, conversation_id, channel, address, provider_message_id, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.conversation_id,
            message.channel,
            address,
            message.provider_message_id,
            _encoded(conn, message),
        ),
    )


def _get_message(conn: sqlite3.Connection, message_id: str) -> Message | None:
    row = conn.execute("SELECT data FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else decode_message(row[0])


def _message_by_provider_id(
    conn: sqlite3.Connection, channel: str, provider_message_id: str
) -> Message | None:
    row = conn.execute(
        "SELECT data FROM messages WHERE channel = ? AND provider_message_id = ?",
        (channel, provider_message_id),
    ).fetchone()
    return None if row is None else decode_message(row[0])


def _apply_status(
    conn: sqlite3.Connection, message: Message, status: DeliveryStatus
) -> StatusResult:
    if not status_moves_forward(message.status, status.status, message.error_code):
        return StatusResult(message, False)
    updated = with_status(message, status)
    conn.execute("UPDATE messages SET data = ? WHERE id = ?", (encode(updated), updated.id))
    conversation = _get_conversation(conn, updated.conversation_id)
    event = Event(type="message.status", at=status.at, conversation=conversation, message=updated)
    events = _append_events(conn, (event,))
    return StatusResult(updated, True, conversation, events)


def _take_orphans(
    conn: sqlite3.Connection, channel: str, provider_message_id: str
) -> list[DeliveryStatus]:
    rows = conn.execute(
        "SELECT data FROM orphan_statuses WHERE channel = ? AND provider_message_id = ?",
        (channel, provider_message_id),
    ).fetchall()
    if not rows:
        return []
    conn.execute(
        "DELETE FROM orphan_statuses WHERE channel = ? AND provider_message_id = ?",
        (channel, provider_message_id),
    )
    statuses = [decode_status(row[0]) for row in rows]
    return sorted(statuses, key=lambda s: DELIVERY_RANK[s.status])


class _WriterConnection(sqlite3.Connection):
    """The writer's connection: `notes` collects the events its jobs append (see _committed);
    `encoded` keeps the JSON of the conversations and messages written in the current batch,
    keyed by object identity, so the events that embed them reuse it (cleared per batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[Event] = []
        self.encoded: dict[int, tuple[object, bytes]] = {}


def _append_events(conn: sqlite3.Connection, events: Iterable[Event]) -> tuple[Event, ...]:
    """Append events to the log in one statement and return them with their cursors.

    One multi-row INSERT numbers its rows consecutively (the writer holds the only write
    lock), so the first event's sequence number follows from the last one's.
    """
    batch = tuple(events)
    if not batch:
        return ()
    documents = [
        dumps_event(
            event,
            _encoded(conn, event.conversation) if event.conversation is not None else None,
            _encoded(conn, event.message) if event.message is not None else None,
        )
        for event in batch
    ]
    rows = ", ".join(["(?)"] * len(documents))
    last = conn.execute(f"INSERT INTO events (data) VALUES {rows}", documents).lastrowid or 0
    first = last - len(documents) + 1
    stored = [event.with_cursor(_cursor(first + i)) for i, event in enumerate(batch)]
    notes = getattr(conn, "notes", None)
    if notes is not None:
        notes.extend(stored)
    return tuple(stored)
