"""The multi-node store: one Redis shared by every gateway process.

Every state transition is one Lua script (`gateway.store.redis_lua`) that checks its
preconditions (compare-and-set on the conversation's version, the dedup key, the
one-open-conversation index, the agent's `max_active`) and then writes the record, its indexes,
its deadlines and its event-log entries (XADD to one stream) in the same atomic step.

Ingest cannot run its planner inside Redis: the planner is Python. It reads with one script
(dedup lookup, the contact's open conversation, the conversation `thread_refs` point to), plans
in Python and commits with a second script that re-checks what the plan depended on (the
dedup key still absent, the open-conversation index unchanged, the expected versions) and
answers `conflict`, with the contact's open conversation as it is now, when something moved:
the ingest is then planned again on that, a bounded number of times. Messages of one contact
arriving at one node at once are serialized by a per-contact lock first, so conflicts only
come from other nodes; and a contact seen recently is planned on what this node last saw of
it, skipping the read (the commit checks exactly what the read would have returned).

All commands go through `CommandBatcher`, which pipelines the calls of concurrent requests
(see `gateway.store.redis_batch`); the blocking XREAD of `wait_events` uses connections of its
own. Layout, hash tags and the Redis Cluster plan: `docs/redis.md`.

When Redis is down or hangs, every call raises `StoreUnavailable` (the redis-py error chained)
instead of waiting: a command is given `STORE_TIMEOUT` (or the URL's `?socket_timeout=`) from
when it was queued, connecting included; an ingest, which may wait for the contact's lock and
then makes several round trips, is given that much in all; a blocking read is given its block
time plus that much.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from gateway.codec import decode_conversation, decode_event, decode_message, decode_status, encode
from gateway.errors import NotFound, StoreUnavailable, TransitionError, VersionConflict
from gateway.keylocks import KeyedLocks
from gateway.lifecycle import Transition, deadlines_of
from gateway.model import (
    DELIVERY_RANK,
    OPEN_STATES,
    Conversation,
    DeliveryStatus,
    Event,
    InboundMessage,
    Message,
    State,
    dumps_event,
    evolve,
    status_moves_forward,
    with_status,
)
from gateway.store.base import (
    HEALTH_PROBE_KEY,
    AgentPresence,
    Deadline,
    IngestPlanner,
    IngestResult,
    ListPosition,
    OutboundResult,
    StatusResult,
    next_version,
    stamp_version,
)
from gateway.store.redis_batch import (
    OUTAGE_ERRORS,
    STORE_TIMEOUT,
    Arg,
    CommandBatcher,
    Script,
    unavailable,
)
from gateway.store.redis_lua import SCRIPTS, source
from gateway.store.redis_url import split_url
from gateway.store.sqlite import from_micros, micros

INGEST_ATTEMPTS = 16
"""Ingest re-plans on conflict; conflicts come only from other nodes (see module docstring)."""

STATUS_ATTEMPTS = 16

DATA_LAYOUT = "2"
"""How this version lays its data out in Redis, recorded by each node's heartbeat. 2: message
sorted sets in stored order (`gw:{g}:mseq`). Nodes of older versions record none; while they
run, what they store does not keep that order (README, Upgrading)."""

log = structlog.get_logger("gateway.store")

BLOCKING_READERS = 1000
"""Connections for `wait_events` (XREAD BLOCK holds one each); redis-py's default is 100."""

RECENT_EVENTS = 2048
"""Events kept for this node's own hub (it reads them back within milliseconds)."""
OPEN_CACHE = 4096
"""Contacts whose open conversation is remembered (a fresh entry saves a read per message)."""

_CURSOR = re.compile(r"^(\d{15})-(\d{10})$")


def cursor_of(stream_id: bytes | str) -> str:
    """Turn a stream id `ms-seq` into a cursor that orders as a string the way the log does."""
    ms, _, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).partition("-")
    return ms.zfill(15) + "-" + seq.zfill(10)


def stream_id_of(cursor: str | None) -> str:
    """The stream id a cursor stands for (`0-0` before the first event)."""
    if cursor is None or cursor == "":
        return "0-0"
    match = _CURSOR.match(cursor)
    if match is None:
        raise ValueError(f"invalid cursor {cursor!r}")
    return f"{int(match.group(1))}-{int(match.group(2))}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _conversation_args(
    conversation: Conversation, expected_version: int, document: bytes
) -> list[Arg]:
    """The 12 arguments of a conversation write (see `read_conv` in the Lua prelude).

    `conversation` already carries the version it is stored with (`next_version`; 1 for an
    insert); `document` is its encoding.
    """
    due = " ".join([f"{kind}={micros(at)}" for kind, at in deadlines_of(conversation).items()])
    return [
        conversation.id,
        str(expected_version),
        document,
        str(conversation.state),
        conversation.queue,
        conversation.agent or "",
        conversation.channel,
        conversation.contact.address,
        str(micros(conversation.queued_at)),
        str(micros(conversation.updated_at)),
        due,
        str(conversation.version),
    ]


_dumps = encode
"""The shared codec's encoder (orjson with native UTC datetimes)."""


class _Encoder:
    """Encode records once per store call: the events of one transition all carry the same
    conversation (and the message), which is also written on its own."""

    def __init__(self) -> None:
        self._done: dict[int, bytes] = {}

    def __call__(self, record: Conversation | Message) -> bytes:
        encoded = self._done.get(id(record))
        if encoded is None:
            encoded = self._done[id(record)] = _dumps(record)
        return encoded

    def events(self, events: Sequence[Event]) -> list[Arg]:
        """The `n, event...` arguments of a script (see `append_events` in the Lua prelude)."""
        docs: list[Arg] = [str(len(events))]
        for event in events:
            conversation, message = event.conversation, event.message
            docs.append(
                dumps_event(
                    event,
                    self(conversation) if conversation is not None else None,
                    self(message) if message is not None else None,
                )
            )
        return docs


@dataclasses.dataclass(frozen=True, slots=True)
class _Known:
    """What an ingest plans on: the contact's open conversation, the threaded-to one."""

    open: Conversation | None
    thread: Conversation | None


def _conversation_or_none(doc: bytes | None) -> Conversation | None:
    return decode_conversation(doc) if doc else None


class RedisStore:
    """The Store Protocol on Redis (see the module docstring and `docs/redis.md`)."""

    def __init__(self, url: str, *, prefix: str = "gw", max_in_flight: int = 2) -> None:
        self.url = url
        self.prefix = prefix
        self.max_in_flight = max_in_flight
        self.timeout = STORE_TIMEOUT
        """How long a store call may wait for Redis (see the module docstring); `open` takes
        it from the URL's `?socket_timeout=` when there is one."""
        self._client: Redis | None = None
        self._blocking: Redis | None = None
        self._batcher: CommandBatcher | None = None
        self._scripts = {name: Script(name, source(name)) for name in SCRIPTS}
        self._heads: dict[str, tuple[Arg, ...]] = {
            name: ("EVALSHA", script.sha, 0, prefix) for name, script in self._scripts.items()
        }
        """The start of each script's EVALSHA command when it declares no keys."""
        self._contacts: KeyedLocks[tuple[str, str]] = KeyedLocks()
        self._recent: OrderedDict[bytes, Event] = OrderedDict()
        """Events this process appended, by stream id as Redis returns it (see `_appended`)."""
        self._open: OrderedDict[tuple[str, str], Conversation | None] = OrderedDict()
        """The open conversation of recently seen contacts, as this process last knew it."""
        self._writes_failing = False
        self._other_layouts: list[str] = []
        """Live nodes of another data layout, as last logged (`store.mixed_versions`)."""
        """A script failed as unavailable (Redis out of memory, read-only, gone): `ping` then
        writes once to tell whether Redis takes writes again."""

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """`redis://host:port/db` (any redis-py URL), plus `?prefix=NAME` for the key prefix."""
        plain, prefix = split_url(url)
        return cls(plain, prefix=prefix)

    # keys ----------------------------------------------------------------------------------
    def _g(self, name: str) -> str:
        return f"{self.prefix}:{{g}}:{name}"

    def _c(self, conversation_id: str) -> str:
        return f"{self.prefix}:{{c:{conversation_id}}}"

    def _m(self, message_id: str) -> str:
        return f"{self.prefix}:{{m:{message_id}}}"

    def _ch(self, channel: str, name: str) -> str:
        return f"{self.prefix}:{{ch:{channel}}}:{name}"

    # lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        # No automatic retries: resending a write after a lost connection could apply it twice
        # as far as the caller can tell; errors surface and the caller (or provider) retries.
        # redis-py's socket timeouts bound connecting (its handshake included) and every reply
        # read through redis-py; the URL's own `socket_timeout` wins over ours, and the connect
        # timeout follows it unless the URL names one too.
        bounded: dict[str, Any] = {
            "protocol": 2,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            "socket_timeout": STORE_TIMEOUT,
            "socket_connect_timeout": None,
        }
        self._client = Redis.from_url(self.url, **bounded)
        self.timeout = float(
            self._client.connection_pool.connection_kwargs.get("socket_timeout") or STORE_TIMEOUT
        )
        # One connection per blocked reader (the hub, each long-polling integrator). Their
        # reads pass a timeout of their own (a blocking XREAD outlasts any socket timeout);
        # the pub/sub listener blocks without one (redis-py reads it with `math.inf`).
        self._blocking = Redis.from_url(self.url, **bounded, max_connections=BLOCKING_READERS)
        self._batcher = CommandBatcher(
            self._client,
            self._scripts.values(),
            max_in_flight=self.max_in_flight,
            timeout=self.timeout,
        )
        await self._batcher.load_scripts()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        for client in (self._client, self._blocking):
            if client is not None:
                await client.aclose()
        self._client = self._blocking = None

    @property
    def batcher(self) -> CommandBatcher:
        if self._batcher is None:
            raise RuntimeError("store is not open")
        return self._batcher

    async def _eval(self, name: str, *args: Arg, keys: Sequence[Arg] = ()) -> Any:
        try:
            if keys:
                return await self.batcher.evalsha(self._scripts[name], keys, (self.prefix, *args))
            # The common case: one tuple, the script's prepared head and the arguments.
            return await self.batcher.send((*self._heads[name], *args))
        except StoreUnavailable:
            self._writes_failing = True  # the scripts write: see `ping`
            raise

    async def _cmd(self, *args: Arg) -> Any:
        return await self.batcher.send(args)

    async def publish_ephemeral(self, event: Event) -> None:
        await self._cmd("PUBLISH", self._g("ephemeral"), encode(event))

    async def ephemeral_events(self) -> AsyncIterator[Event]:
        client = self._blocking
        if client is None:
            raise RuntimeError("store is not open")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._g("ephemeral"))
            async for item in pubsub.listen():
                if item.get("type") == "message":
                    yield decode_event(item["data"])
        except OUTAGE_ERRORS as exc:
            raise unavailable(exc) from exc
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> bool:
        return await self.problem() is None

    async def problem(self) -> str | None:
        """Redis answers and takes writes. Out of memory or read-only (a replica after a
        failover), it still answers PING: while scripts are failing a small write is tried."""
        try:
            if await self._cmd("PING") != b"PONG":
                return "unreachable"
        except Exception:
            return "unreachable"
        if self._writes_failing:
            try:
                await self._cmd("HSET", self._g("kv"), HEALTH_PROBE_KEY, str(time.time()))
            except Exception:
                return "writes_failing"
            self._writes_failing = False
        return None

    # conversations -----------------------------------------------------------------------------
    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        doc = await self._cmd("HGET", self._c(conversation_id), "d")
        return None if doc is None else decode_conversation(doc)

    async def get_conversations(self, conversation_ids: Collection[str]) -> dict[str, Conversation]:
        # Issued together, the batcher sends these as one pipeline.
        found = await asyncio.gather(*(self.get_conversation(i) for i in conversation_ids))
        return {c.id: c for c in found if c is not None}

    async def find_open_conversation(self, channel: str, address: str) -> Conversation | None:
        doc = await self._eval("find_open", channel, address)
        return None if doc is None else decode_conversation(doc)

    async def list_conversations(
        self,
        state: State,
        *,
        queues: Collection[str] | None = None,
        agent: str | None = None,
        limit: int = 200,
        after: ListPosition | None = None,
    ) -> list[Conversation]:
        names = [] if queues is None else list(queues)
        if queues is not None and not names:
            return []
        docs = await self._eval(
            "list_conversations",
            str(state),
            agent or "",
            str(limit),
            "1" if queues is None else "0",
            "" if after is None else str(after[0]),
            "" if after is None else after[1],
            *names,
        )
        return [decode_conversation(d) for d in docs if d is not None]

    async def count_by_state(self, *, agent: str | None = None) -> dict[tuple[str, str], int]:
        if agent is not None:
            open_states = (str(s) for s in State if s in OPEN_STATES)  # see Store.count_by_state
            flat = await self._eval("count_assigned", agent, *open_states)
            return {
                (_text(flat[j]), _text(flat[j + 1])): int(flat[j + 2])
                for j in range(0, len(flat), 3)
            }
        raw = await self._cmd("HGETALL", self._g("count"))
        counts: dict[tuple[str, str], int] = {}
        for key, value in zip(raw[::2], raw[1::2], strict=True):
            state, _, queue = _text(key).partition("\t")
            counts[(state, queue)] = int(value)
        return counts

    async def agent_loads(self) -> dict[str, int]:
        raw = await self._cmd("HGETALL", self._g("load"))
        return {_text(k): int(v) for k, v in zip(raw[::2], raw[1::2], strict=True) if int(v) > 0}

    async def update_conversation(
        self,
        transition: Transition,
        expected_version: int,
        *,
        max_active: int | None = None,
    ) -> tuple[Conversation, tuple[Event, ...]]:
        stored = evolve(transition.conversation, version=next_version(transition, expected_version))
        events = stamp_version(transition.events, stored)
        encoder = _Encoder()
        reply = await self._eval(
            "update",
            "" if max_active is None else str(max_active),
            *_conversation_args(stored, expected_version, encoder(stored)),
            *encoder.events(events),
        )
        status = _text(reply[0])
        if status == "conflict":
            raise VersionConflict(f"conversation {stored.id} changed meanwhile")
        if status == "max_active":
            raise TransitionError(
                "max_active_reached",
                f"agent {stored.agent} already has {_text(reply[1])} active conversations",
            )
        self._note(stored)
        return stored, self._appended(events, reply)

    async def update_conversations(
        self, items: Sequence[tuple[Transition, int]]
    ) -> list[tuple[Conversation, tuple[Event, ...]] | VersionConflict]:
        async def one(
            transition: Transition, version: int
        ) -> tuple[Conversation, tuple[Event, ...]] | VersionConflict:
            try:
                return await self.update_conversation(transition, version)
            except VersionConflict as conflict:
                return conflict

        # Each is its own atomic script; issued together they share pipelines.
        return list(await asyncio.gather(*(one(t, v) for t, v in items)))

    # messages ----------------------------------------------------------------------------------
    async def ingest(self, inbound: InboundMessage, planner: IngestPlanner) -> IngestResult:
        # Bounded in all, not per round trip: when Redis hangs, the ingests of one contact
        # queued on its lock would otherwise each wait for the ones before them to time out.
        try:
            async with asyncio.timeout(self.timeout):
                return await self._ingest(inbound, planner)
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"the Redis store did not store the message within {self.timeout:g} s"
            ) from exc

    async def _ingest(self, inbound: InboundMessage, planner: IngestPlanner) -> IngestResult:
        key = (inbound.channel, inbound.contact.address)
        await self._contacts.acquire(key)
        try:
            # What this node last saw of the contact saves the read when it is still true; the
            # commit re-checks it either way, and a conflict answers with the fresh state.
            known: _Known | None = None
            if not inbound.thread_refs and key in self._open:
                self._open.move_to_end(key)
                known = _Known(self._open[key], None)
            for _ in range(INGEST_ATTEMPTS):
                if known is None:
                    read = await self._eval(
                        "ingest_read",
                        inbound.channel,
                        inbound.provider_message_id,
                        inbound.contact.address,
                        *inbound.thread_refs,
                    )
                    if _text(read[0]) == "dup":
                        message, owner = decode_message(read[1]), decode_conversation(read[2])
                        return IngestResult(True, message, owner)
                    known = _Known(_conversation_or_none(read[1]), _conversation_or_none(read[2]))
                try:
                    outcome = await self._commit_ingest(inbound, planner, known)
                except BaseException:
                    # The plan may have failed on what this node remembers (another node's
                    # timer expired the window meanwhile): the next try reads afresh.
                    self._open.pop(key, None)
                    raise
                if isinstance(outcome, IngestResult):
                    return outcome
                known = outcome
        finally:
            self._contacts.release(key)
        raise VersionConflict("the contact's conversation kept changing; try again")

    async def _commit_ingest(
        self, inbound: InboundMessage, planner: IngestPlanner, known: _Known
    ) -> IngestResult | _Known | None:
        """Plan on `known` and commit; on conflict return the fresh state to plan on (None
        when it has to be read again: the thread lookup is not part of a conflict reply)."""
        open_conv, thread_conv = known.open, known.thread
        plan = planner(open_conv, thread_conv)
        transition = plan.transition
        conversation = transition.conversation
        message = plan.message
        write: list[Arg] = ["0"]
        conversation_doc: bytes | None = None
        if transition.changed:
            if open_conv is not None and open_conv.id == conversation.id:
                expected = open_conv.version
            elif thread_conv is not None and thread_conv.id == conversation.id:
                expected = thread_conv.version
            else:
                expected = 0
            if conversation.version != expected + 1:
                conversation = evolve(conversation, version=expected + 1)
            conversation_doc = _dumps(conversation)
            write = ["1", *_conversation_args(conversation, expected, conversation_doc)]
        message_doc = _dumps(message)
        received = Event(
            type="message.received",
            at=message.received_at,
            conversation=conversation,
            message=message,
        )
        # The events carry the stored conversation (what `stamp_version` makes): their documents
        # embed its encoding, and the stored events are made once their cursors are known.
        events = (*transition.events, received)
        if conversation_doc is None and any(e.conversation is not None for e in events):
            conversation_doc = _dumps(conversation)
        docs: list[Arg] = [str(len(events))]
        for event in events:
            docs.append(
                dumps_event(
                    event,
                    conversation_doc if event.conversation is not None else None,
                    message_doc if event.message is message else None,
                )
            )
        reply = await self._eval(
            "ingest_commit",
            inbound.channel,
            inbound.provider_message_id,
            inbound.contact.address,
            open_conv.id if open_conv is not None else "",
            *write,
            message.id,
            message.conversation_id,
            message_doc,
            *docs,
        )
        status = _text(reply[0])
        if status == "dup":  # a concurrent delivery of the same message won
            existing = await self.find_message(inbound.channel, inbound.provider_message_id)
            owner = await self.get_conversation(existing.conversation_id) if existing else None
            if existing is None or owner is None:
                raise NotFound("the duplicate's message or conversation is missing")
            return IngestResult(True, existing, owner)
        key = (inbound.channel, inbound.contact.address)
        if status != "ok":
            self._open.pop(key, None)
            if inbound.thread_refs:
                return None
            return _Known(_conversation_or_none(reply[1]), None)
        # The commit verified the open conversation was `open_conv`, then wrote `conversation`.
        if transition.changed and conversation.is_open:
            now_open: Conversation | None = conversation
        elif transition.changed and open_conv is not None and open_conv.id == conversation.id:
            now_open = None
        else:
            now_open = open_conv
        self._remember_open(key, now_open)
        stored = self._appended(events, reply, conversation)
        return IngestResult(False, message, conversation, stored, transition.distribute)

    def _remember_open(self, key: tuple[str, str], conversation: Conversation | None) -> None:
        self._open[key] = conversation
        self._open.move_to_end(key)
        while len(self._open) > OPEN_CACHE:
            self._open.popitem(last=False)

    def _note(self, conversation: Conversation) -> None:
        """Keep what we know of a contact's open conversation true after our own changes."""
        key = (conversation.channel, conversation.contact.address)
        if key not in self._open:
            return
        cached = self._open[key]
        if conversation.is_open:
            self._open[key] = conversation
        elif cached is not None and cached.id == conversation.id:
            self._open[key] = None

    async def add_outbound(
        self,
        transition: Transition,
        expected_version: int,
        message: Message,
        idempotency_key: str | None,
        deliver_by: datetime | None = None,
    ) -> OutboundResult:
        stored = evolve(transition.conversation, version=expected_version + 1)
        sent = Event(
            type="message.sent", at=message.received_at, conversation=stored, message=message
        )
        events = (*stamp_version(transition.events, stored), sent)
        encoder = _Encoder()
        reply = await self._eval(
            "add_outbound",
            idempotency_key or "",
            *_conversation_args(stored, expected_version, encoder(stored)),
            message.id,
            encoder(message),
            message.provider_message_id or "",
            "" if deliver_by is None else str(micros(deliver_by)),
            *encoder.events(events),
        )
        status = _text(reply[0])
        if status == "idem":
            previous = await self.get_message(_text(reply[1]))
            conversation = await self.get_conversation(message.conversation_id)
            if previous is None or conversation is None:
                raise NotFound("the idempotent message is missing")
            return OutboundResult(previous, False, conversation)
        if status == "conflict":
            raise VersionConflict(f"conversation {stored.id} changed meanwhile")
        if status == "pid_taken":
            raise VersionConflict("another message already carries this provider message id")
        self._note(stored)
        return OutboundResult(message, True, stored, self._appended(events, reply))

    async def find_idempotent(self, conversation_id: str, key: str) -> Message | None:
        doc = await self._eval("find_idempotent", conversation_id, key)
        return None if doc is None else decode_message(doc)

    async def record_send(
        self,
        message_id: str,
        *,
        provider_message_id: str | None,
        status: DeliveryStatus | None,
    ) -> StatusResult:
        for _ in range(STATUS_ATTEMPTS):
            read = await self._eval("status_read", "id", message_id, provider_message_id or "")
            if not read:
                return StatusResult(None, False)
            _, doc, version, conv_doc, *orphan_docs = read
            original = decode_message(doc)
            conversation = decode_conversation(conv_doc) if conv_doc else None
            message = original
            if provider_message_id and message.provider_message_id != provider_message_id:
                message = evolve(message, provider_message_id=provider_message_id)
            planned = _Planned(StatusResult(message, True), [])
            if status is not None:
                planned = _plan_status(planned, message, status, conversation)
            orphans = [decode_status(d) for d in orphan_docs]
            # Reports that arrived before the send returned the provider's id.
            for early in sorted(orphans, key=lambda s: DELIVERY_RANK[s.status]):
                current = planned.result.message or message
                applied = _plan_status(planned, current, early, conversation)
                if applied.result.moved:
                    planned = applied
            final = planned.result.message or message
            if final == original and not orphans:
                return planned.result
            reply = await self._eval(
                "status_commit",
                message_id,
                _text(version),
                encode(final),
                provider_message_id or "",
                str(len(orphans)) if provider_message_id else "-1",
                str(conversation.version) if planned.events and conversation else "",
                *_Encoder().events(planned.events),
            )
            outcome = _text(reply[0])
            if outcome == "pid_taken":
                raise VersionConflict("another message already carries this provider message id")
            if outcome == "ok":
                finished = planned.finish(self._appended(planned.events, reply))
                if any(early.closes_window for early in orphans):
                    finished = evolve(finished, closes_window=True)
                return finished
        raise VersionConflict(f"message {message_id} kept changing")

    async def apply_status(self, status: DeliveryStatus) -> StatusResult:
        for _ in range(STATUS_ATTEMPTS):
            read = await self._eval(
                "status_read", "pid", status.channel, status.provider_message_id
            )
            if not read:
                # Perhaps the send has not returned its id yet: keep it for record_send.
                kept = await self._eval(
                    "orphan_add", status.channel, status.provider_message_id, encode(status)
                )
                if _text(kept[0]) == "ok":
                    return StatusResult(None, False)
                continue
            message_id, doc, version, conv_doc = (_text(read[0]), read[1], read[2], read[3])
            message = decode_message(doc)
            conversation = decode_conversation(conv_doc) if conv_doc else None
            planned = _plan_status(
                _Planned(StatusResult(message, False), []), message, status, conversation
            )
            if not planned.result.moved:
                return planned.result
            final = planned.result.message or message
            reply = await self._eval(
                "status_commit",
                message_id,
                _text(version),
                encode(final),
                "",
                "-1",
                str(conversation.version) if conversation else "",
                *_Encoder().events(planned.events),
            )
            if _text(reply[0]) == "ok":
                return planned.finish(self._appended(planned.events, reply))
        raise VersionConflict(f"status for {status.provider_message_id} kept conflicting")

    async def get_message(self, message_id: str) -> Message | None:
        doc = await self._cmd("HGET", self._m(message_id), "d")
        return None if doc is None else decode_message(doc)

    async def find_message(self, channel: str, provider_message_id: str) -> Message | None:
        doc = await self._eval("find_message", channel, provider_message_id)
        return None if doc is None else decode_message(doc)

    async def list_recent_messages(
        self, conversation_id: str, *, before: str | None = None, limit: int = 1000
    ) -> list[Message]:
        key = self._c(conversation_id) + ":msgs"
        docs = await self._eval("list_recent_messages", before or "", str(limit), keys=[key])
        return [decode_message(d) for d in docs if d is not None]

    async def list_contact_messages(
        self, channel: str, address: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Message]:
        return await self._list_messages(self._ch(channel, f"contact:{address}"), after, limit)

    async def _list_messages(self, key: str, after: str | None, limit: int) -> list[Message]:
        docs = await self._eval("list_messages", after or "", str(limit), keys=[key])
        return [decode_message(d) for d in docs if d is not None]

    # event log ---------------------------------------------------------------------------------
    def _appended(
        self,
        events: Sequence[Event],
        reply: Sequence[Any],
        conversation: Conversation | None = None,
    ) -> tuple[Event, ...]:
        """Attach the stream ids a script returned (after its 'ok') to the events it appended,
        and remember them: this node's hub reads them back from the log, and decoding an
        event costs more than everything else the hub does with it.

        With `conversation`, every event that carries a conversation carries that one (what
        `stamp_version` does, without the intermediate copies).
        """
        recent = self._recent
        stored = []
        for event, stream_id in zip(events, reply[1:], strict=True):
            carried = event.conversation
            if conversation is not None and carried is not None:
                carried = conversation
            made = Event(
                event.type,
                event.at,
                carried,
                event.message,
                event.change,
                cursor_of(stream_id),
                event.moved_from,
            )
            recent[stream_id] = made
            stored.append(made)
        while len(recent) > RECENT_EVENTS:
            recent.popitem(last=False)
        return tuple(stored)

    def _event(self, stream_id: bytes, fields: Sequence[bytes]) -> Event:
        """An event from a stream entry (`fields` is `[b"d", document]`)."""
        known = self._recent.get(stream_id)
        return known if known is not None else decode_event(fields[1], cursor_of(stream_id))

    async def read_events(self, after: str | None, limit: int = 500) -> list[Event]:
        start = "(" + stream_id_of(after) if after else "-"
        entries = await self._cmd("XRANGE", self._g("log"), start, "+", "COUNT", str(limit))
        return [self._event(sid, fields) for sid, fields in entries]

    async def wait_events(self, after: str | None, timeout: float) -> list[Event]:
        if timeout <= 0:
            return await self.read_events(after)
        if self._blocking is None:
            raise RuntimeError("store is not open")
        start = stream_id_of(after)
        block = max(1, int(timeout * 1000))
        pool = self._blocking.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except OUTAGE_ERRORS as exc:
            raise unavailable(exc) from exc
        try:
            await conn.send_command(
                "XREAD", "COUNT", "500", "BLOCK", str(block), "STREAMS", self._g("log"), start
            )
            # Redis answers when the block time is up; past that and `self.timeout` more, it
            # hangs. (redis-py's own read timeout would return None, as XREAD's "nothing" does.)
            async with asyncio.timeout(block / 1000 + self.timeout):
                reply: Any = await conn.read_response(timeout=math.inf)
        except BaseException as exc:  # cancelled or failed mid-read: the reply would desync
            await conn.disconnect(nowait=True)
            if isinstance(exc, OUTAGE_ERRORS):
                raise unavailable(exc) from exc
            raise
        finally:
            await pool.release(conn)
        entries = reply[0][1] if reply else ()
        recent = self._recent
        if any(sid not in recent for sid, _ in entries):
            # Our own commits may still be on their way back: their events are in memory then.
            await self.batcher.settled()
        return [self._event(sid, fields) for sid, fields in entries]

    async def last_cursor(self) -> str | None:
        entries = await self._cmd("XREVRANGE", self._g("log"), "+", "-", "COUNT", "1")
        if entries:
            return cursor_of(entries[0][0])
        # Empty: new, or retention trimmed every event. The stream still knows the last id it
        # gave out; cursors up to it are this log's, and reading after them waits for the next.
        try:
            info = await self._cmd("XINFO", "STREAM", self._g("log"))
        except ResponseError:  # no stream yet: nothing was ever handed out
            return None
        fields = dict(zip(info[::2], info[1::2], strict=False))
        last = fields.get(b"last-generated-id")
        return None if last in (None, b"0-0") else cursor_of(last)

    async def prune_events(self, before: datetime, limit: int) -> int:
        # Stream ids are the milliseconds Redis appended them at: trimming by id is by age.
        # The age is measured on Redis's clock too (the script reads TIME): `before` as an age
        # on this node's clock, so a node whose clock runs hours ahead does not trim events
        # that are minutes old on the clock that stamped them.
        # Exact trimming frees whole nodes of entries at a time, so a backlog goes in one call
        # (`limit` only applies to approximate trimming, which keeps small logs whole).
        age_ms = max(0, int((time.time() - before.timestamp()) * 1000))
        return int(await self._eval("prune_events", str(age_ms)))

    async def events_missed(self, after: str | None) -> bool:
        pruned = await self._cmd("GET", self._g("pruned"))  # the newest id retention took
        return pruned is not None and cursor_of(pruned) > (after or "")

    # deadlines ---------------------------------------------------------------------------------
    async def claim_due(
        self, now: datetime, limit: int, lease: timedelta, node: str | None = None
    ) -> list[Deadline]:
        reply = await self._eval(
            "claim_due", str(micros(now)), str(limit), str(micros(now + lease)), node or ""
        )
        claimed = []
        for i in range(0, len(reply), 2):
            target, _, kind = _text(reply[i]).rpartition("\t")
            claimed.append(Deadline(target, kind, from_micros(int(reply[i + 1]))))
        return claimed

    async def set_deadline(self, target: str, kind: str, due_at: datetime) -> None:
        await self._eval("set_deadline", f"{target}\t{kind}", str(micros(due_at)))

    async def clear_deadline(self, target: str, kind: str, due_at: datetime | None = None) -> None:
        due = "" if due_at is None else str(micros(due_at))
        await self._eval("clear_deadline", f"{target}\t{kind}", due)

    async def next_due(self) -> datetime | None:
        first = await self._cmd("ZRANGE", self._g("due"), "0", "0", "WITHSCORES")
        return from_micros(int(float(first[1]))) if first else None

    # presence ----------------------------------------------------------------------------------
    async def presence_connect(self, agent: str, connection: str, node: str, now: datetime) -> None:
        await self._eval("presence_connect", agent, connection, node)

    async def presence_disconnect(
        self, agent: str, connection: str, now: datetime, grace: timedelta
    ) -> bool:
        last = await self._eval(
            "presence_disconnect", agent, connection, str(micros(now)), str(micros(now + grace))
        )
        return bool(last)

    async def presence_drop_node(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        agents = await self._eval("drop_node", str(micros(now)), str(micros(now + grace)), node)
        return sorted(_text(a) for a in agents)

    async def presence_startup(self, node: str, now: datetime, grace: timedelta) -> list[str]:
        """Forget connections of nodes whose heartbeat lapsed (other nodes may be alive).

        Their agents, and agents with active conversations but neither a connection nor an
        armed grace, get the grace armed now; an already armed grace is left as it is.
        """
        agents = await self._eval(
            "presence_startup", node, str(micros(now)), str(micros(now + grace))
        )
        return sorted(_text(a) for a in agents)

    async def node_heartbeat(self, node: str, now: datetime, ttl: timedelta) -> bool:
        # Alive until Redis's clock plus `ttl` (`now` is this node's, which other nodes'
        # clocks need not agree with): see NODE_HEARTBEAT.
        reply = await self._eval(
            "node_heartbeat", node, str(int(ttl.total_seconds() * 1e6)), DATA_LAYOUT
        )
        others = sorted(_text(n) for n in reply[1:])
        if others != self._other_layouts:
            self._other_layouts = others
            if others:
                log.warning(
                    "store.mixed_versions",
                    nodes=others,
                    layout=DATA_LAYOUT,
                    hint="these nodes run another version: messages they store are listed"
                    " out of order; stop every node before starting this version (README,"
                    " Upgrading)",
                )
        return bool(reply[0])

    async def reap_nodes(self, now: datetime, grace: timedelta) -> list[str]:
        agents = await self._eval("reap_nodes", str(micros(now)), str(micros(now + grace)))
        return sorted(_text(a) for a in agents)

    async def presence(self) -> dict[str, AgentPresence]:
        reply = await self._eval("presence")
        pairs = int(reply[0])
        result: dict[str, AgentPresence] = {}
        for i in range(1, 1 + 2 * pairs, 2):
            result[_text(reply[i])] = AgentPresence(False, from_micros(int(reply[i + 1])))
        for raw in reply[1 + 2 * pairs :]:
            agent = _text(raw)
            previous = result.get(agent)
            result[agent] = AgentPresence(True, previous.last_seen_at if previous else None)
        return result

    # key-value ---------------------------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        value = await self._cmd("HGET", self._g("kv"), key)
        return None if value is None else _text(value)

    async def kv_set(self, key: str, value: str) -> None:
        await self._cmd("HSET", self._g("kv"), key, value)

    async def kv_compare_set(self, key: str, expected: str | None, value: str) -> bool:
        done = await self._eval(
            "kv_compare_set", key, expected or "", value, "1" if expected is None else "0"
        )
        return bool(done)

    async def cursor_issued(self, cursor: str) -> bool:
        """See `Store.cursor_issued`: ASCII `ms-seq` digits past `0-0`, up to the newest entry."""
        if not cursor.isascii() or _CURSOR.fullmatch(cursor) is None or not cursor.strip("0-"):
            return False
        newest = await self.last_cursor()
        return newest is not None and cursor <= newest  # fixed width: string order is log order


@dataclasses.dataclass
class _Planned:
    """A delivery-status change decided in Python, before its commit assigns cursors."""

    result: StatusResult
    events: list[Event]
    last_moved: int = -1

    def finish(self, stored: tuple[Event, ...]) -> StatusResult:
        """The result as SQLite reports it: the events of the last forward move only."""
        if self.last_moved < 0:
            return self.result
        return evolve(self.result, events=(stored[self.last_moved],))


def _plan_status(
    planned: _Planned, message: Message, status: DeliveryStatus, conversation: Conversation | None
) -> _Planned:
    """Apply a report to a message if it moves forward (same rule as the SQLite store)."""
    if not status_moves_forward(message.status, status.status, message.error_code):
        return _Planned(StatusResult(message, False), planned.events, planned.last_moved)
    updated = with_status(message, status)
    event = Event(type="message.status", at=status.at, conversation=conversation, message=updated)
    events = [*planned.events, event]
    return _Planned(StatusResult(updated, True, conversation, (event,)), events, len(events) - 1)
