"""Pipelining for the Redis store: the store calls of concurrent requests share round trips.

With one redis-py call per store operation the Python client, not Redis, is the bottleneck:
every call pays for taking a pooled connection, a socket write, waking up for the reply and
releasing the connection. `CommandBatcher` is the Redis counterpart of SQLite's group commit:
commands issued during one event-loop tick are sent as one pipeline (no MULTI: each command is
a self-contained script or read), and while up to `max_in_flight` pipelines are on the wire,
new commands queue up for the next one. Each caller's future gets its own reply or its own
error, so one failing script never fails its neighbours.

With `appendfsync always` Redis writes and fsyncs the AOF once per event-loop iteration before
it replies, so a pipeline of writes shares one fsync, and every reply still means "durable".

Scripts are called by EVALSHA. Redis forgets its script cache when it restarts; a `NOSCRIPT`
reply means the script did not run, so the batcher loads the scripts again and resends exactly
those commands. No other error is retried here: a connection lost mid-pipeline may or may not
have run a write, and only the caller can decide what to do about that.

A lost or refused connection and a pipeline that is not answered in time fail its callers with
`StoreUnavailable` (the redis-py error chained as its cause); error replies of single commands
(a script's error, a wrong type) stay what they are: those are bugs, not outages. A command's
wait is bounded from the moment it was queued, not from when its pipeline left: when Redis
hangs, the commands queued behind the pipelines on the wire fail at their own deadline rather
than each waiting for a full timeout of their own pipeline after those failed.

The batcher keeps its own connections (one per pipeline in flight) and speaks to them directly
rather than through redis-py's Pipeline: that path takes a pooled connection, checks it, wraps
every reply in a timeout and runs response callbacks, which costs more Python time than the
commands themselves. redis-py sets the connection up (AUTH, SELECT, TLS); the replies of a
pipeline are then parsed by a hiredis reader of the batcher's own, fed whatever the socket
holds, so reading a whole pipeline takes one await per socket read rather than several Python
calls and an await per reply. Replies are raw RESP2 values (bytes, ints, lists): an HGETALL is
a flat list, a PING is b"PONG".
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable

Arg = str | bytes | int | float

STORE_TIMEOUT = 5.0
"""Longest wait, in seconds, for Redis to answer one command (and to connect), unless the store
URL says otherwise with redis-py's own `?socket_timeout=` (see `RedisStore.open`).

Why 5 s: a healthy Redis answers in milliseconds (an `appendfsync always` write included), so
5 s only ever expires when Redis hangs, and a webhook then still gets its 503 well inside what
providers wait for (Twilio gives up after 15 s and retries only refused connections, so a
webhook must be answered before that). It is also redis-py's default socket timeout and what
/readyz waited before. A timed-out write may still have been applied: nothing is acknowledged
to the caller, the provider retries, and the dedup keys make the retry a duplicate."""

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # refused, reset, closed, LOADING, a failed AUTH
    RedisTimeoutError,
    OSError,
    TimeoutError,
)
"""What a Redis that is down, restarting or hung raises (redis-py's and the socket's own)."""


REFUSING_CLASSES: tuple[type[BaseException], ...] = (
    OutOfMemoryError,
    ReadOnlyError,
    MasterDownError,
)
REFUSING_PREFIXES = ("OOM ", "READONLY ", "MISCONF ", "NOREPLICAS ", "MASTERDOWN ")
"""Error replies of a Redis that is up but takes no writes for now: out of memory, a replica
after a failover, a failing disk (`stop-writes-on-bgsave-error`), too few replicas. Like an
outage, they pass (or are fixed by an operator) and the caller should retry: StoreUnavailable,
not an internal error. redis-py gives some their own class (without the code in the text); the
rest, and refusals inside a script, are told by the code the text starts with."""


def refusing_writes(reply: BaseException) -> bool:
    """Whether an error reply means "Redis cannot take writes right now" (see above)."""
    return isinstance(reply, REFUSING_CLASSES) or str(reply).startswith(REFUSING_PREFIXES)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The `StoreUnavailable` standing for an outage error (raise it `from exc`)."""
    detail = str(exc) or f"no answer in time ({type(exc).__name__})"
    return StoreUnavailable(f"the Redis store is unavailable: {detail}")


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script known by its SHA1 digest (what Redis names it in EVALSHA)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


_pack = hiredis.pack_command
_NOT_ENOUGH_DATA: Any = object()
_READ_SIZE = 65536


def _new_reader() -> hiredis.Reader:
    return hiredis.Reader(
        protocolError=InvalidResponse,
        replyError=BaseParser.parse_error,
        notEnoughData=_NOT_ENOUGH_DATA,
    )


async def _read_replies(conn: AbstractConnection, reader: hiredis.Reader, count: int) -> list[Any]:
    """Read `count` replies from `conn` with `reader`, its own parser (see `_Link`): an error
    reply is its exception object, in its place."""
    stream: asyncio.StreamReader | None = conn._reader
    if stream is None:
        raise RedisConnectionError("connection closed")
    results: list[Any] = []
    append = results.append
    gets = reader.gets
    while True:
        reply = gets()
        while reply is not _NOT_ENOUGH_DATA:
            if isinstance(reply, RedisConnectionError):  # LOADING and the like: as redis-py
                raise reply
            append(reply)
            if len(results) == count:
                return results
            reply = gets()
        data = await stream.read(_READ_SIZE)
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        reader.feed(data)


class _Link:
    """One of the batcher's connections and the hiredis reader that parses its replies.

    redis-py's `read_response` costs several Python calls and an await per reply; a pipeline
    instead feeds what the socket has to its own hiredis reader and takes every complete reply.
    Error replies come back as redis-py's exception classes (`NoScriptError` for NOSCRIPT).
    """

    __slots__ = ("conn", "reader")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.reader = _new_reader()


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # the caller was cancelled; the command ran anyway
        return
    if isinstance(result, BaseException):
        if refusing_writes(result):
            error = unavailable(result)
            error.__cause__ = result
            result = error
        future.set_exception(result)
    else:
        future.set_result(result)


class CommandBatcher:
    """Sends the commands of one loop tick as one pipeline; see the module docstring."""

    def __init__(
        self,
        client: Redis,
        scripts: Iterable[Script] = (),
        *,
        max_in_flight: int = 2,
        max_batch: int = 1000,
        timeout: float = STORE_TIMEOUT,
    ) -> None:
        self._client = client
        self.timeout = timeout
        """Longest wait for a command's reply, from when it was queued (connecting included);
        past it the pipeline's connection is dropped and its callers get `StoreUnavailable`."""
        self._idle: list[_Link] = []
        self._scripts = {s.sha: s for s in scripts}
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._pending: list[tuple[Arg, ...]] = []
        self._waiting: list[asyncio.Future[Any]] = []
        """The futures of the `_pending` commands, in the same order."""
        self._pending_since = 0.0
        """When the oldest of the `_pending` commands was queued (loop time)."""
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines_sent = 0
        """How many pipelines went out (tests and benchmarks read it)."""
        self.commands_sent = 0

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (once per Redis start; EVALSHA names them afterwards)."""
        for script in self._scripts.values():
            try:
                sha = await self._client.script_load(script.source)
            except OUTAGE_ERRORS as exc:
                raise unavailable(exc) from exc
            if sha != script.sha:  # pragma: no cover - Redis always names scripts by SHA1
                raise RuntimeError(f"Redis named script {script.name} {sha}, not {script.sha}")

    def execute(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command for the next pipeline; the future resolves with its reply."""
        return self.send(args)

    def send(self, command: tuple[Arg, ...]) -> asyncio.Future[Any]:
        """`execute` for a command already made as one tuple (what the store's hot paths do)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            self._pending_since = loop.time()
        self._pending.append(command)
        self._waiting.append(future)
        if not self._scheduled:
            self._schedule()
        return future

    def evalsha(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> asyncio.Future[Any]:
        """Queue an EVALSHA of `script` (which must be one of the batcher's scripts)."""
        return self.send(("EVALSHA", script.sha, len(keys), *keys, *args))

    async def drain(self) -> None:
        """Wait until every queued command has been answered (used before closing)."""
        while self._pending or self._tasks:
            if self._tasks:
                await asyncio.gather(*tuple(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)

    async def settled(self) -> None:
        """Wait until the pipelines on the wire now have been answered and their callers
        resumed (later pipelines are not waited for)."""
        if self._tasks:
            await asyncio.wait(tuple(self._tasks))

    async def close(self) -> None:
        await self.drain()
        idle, self._idle = self._idle, []
        for link in idle:
            await link.conn.disconnect()

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight < self.max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            # The oldest command's deadline. A remainder left for the next pipeline (more than
            # `max_batch` queued) keeps the same start: that may shorten its wait, never
            # lengthen it.
            deadline = self._pending_since + self.timeout
            size = self.max_batch
            if len(self._pending) <= size:
                commands, futures = self._pending, self._waiting
                self._pending, self._waiting = [], []
            else:
                commands, futures = self._pending[:size], self._waiting[:size]
                del self._pending[:size], self._waiting[:size]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(commands, futures, deadline))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self,
        commands: list[tuple[Arg, ...]],
        futures: list[asyncio.Future[Any]],
        deadline: float,
    ) -> None:
        try:
            results = await self._pipeline(commands, deadline)
            if NoScriptError in map(type, results):
                results = await self._after_noscript(commands, results)
        except BaseException as exc:  # the whole pipeline failed (connection lost, cancelled)
            error: BaseException = (
                exc if isinstance(exc, Exception) else ConnectionError("pipeline cancelled")
            )
            if isinstance(error, OUTAGE_ERRORS):
                cause, error = error, unavailable(error)
                error.__cause__ = cause
            for future in futures:
                _settle(future, error)
            if not isinstance(exc, Exception):
                raise
        else:
            for future, result in zip(futures, results, strict=True):
                _settle(future, result)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._schedule()

    @staticmethod
    async def _stale(link: _Link) -> bool:
        """An idle connection with unread data or EOF (Redis restarted) must not be reused;
        checking costs no system call."""
        try:
            return bool(await link.conn.can_read()) or bool(link.reader.has_data())
        except (OSError, ConnectionError, RedisConnectionError):
            return True

    def _new_connection(self) -> AbstractConnection:
        """A connection of our own, configured like the client's (not borrowed from its pool)."""
        conn: AbstractConnection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return conn

    async def _pipeline(self, commands: list[tuple[Arg, ...]], deadline: float) -> list[Any]:
        if asyncio.get_running_loop().time() >= deadline:
            # Queued behind pipelines that were not answered in time: nobody waits any more
            # for these, so they are not sent at all.
            raise TimeoutError(f"Redis did not answer within {self.timeout:g} s")
        link = self._idle.pop() if self._idle else _Link(self._new_connection())
        conn = link.conn
        self.pipelines_sent += 1
        self.commands_sent += len(commands)
        try:
            async with asyncio.timeout_at(deadline):
                if conn.is_connected and await self._stale(link):
                    await conn.disconnect(nowait=True)
                if not conn.is_connected:
                    await conn.connect()  # type: ignore[no-untyped-call]
                    link.reader = _new_reader()
                packed = b"".join([_pack(args) for args in commands])  # type: ignore[arg-type]
                await conn.send_packed_command(packed, check_health=False)
                results = await _read_replies(conn, link.reader, len(commands))
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise TimeoutError(f"Redis did not answer within {self.timeout:g} s") from exc
        except BaseException:
            # Whatever was not read is lost with the connection: never reuse it (and do not
            # wait for a hung peer to acknowledge the close).
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(link)
        return results

    async def _after_noscript(
        self, commands: list[tuple[Arg, ...]], results: list[Any]
    ) -> list[Any]:
        """Redis lost its script cache (a restart): load the scripts, resend what did not run."""
        await self.load_scripts()
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        deadline = asyncio.get_running_loop().time() + self.timeout
        retried = await self._pipeline([commands[i] for i in again], deadline)
        merged = list(results)
        for i, result in zip(again, retried, strict=True):
            merged[i] = result
        return merged
