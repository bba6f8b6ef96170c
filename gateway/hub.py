"""Live fan-out of the event log to this node's sockets (agents' streams, web chat visitors).

One task per node tails the store's log (`wait_events`), so events committed by any node reach
every node's subscribers, in log order, once. A subscriber that falls behind is cut off rather
than allowed to grow memory without bound; it then catches up from the store by cursor, which is
why every consumer tracks the cursor of the last event it handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import structlog

from gateway.errors import StoreUnavailable
from gateway.model import Event
from gateway.outagelog import LoopOutage
from gateway.store.base import Store

log = structlog.get_logger("gateway.hub")

STOP_WAIT = 2.0
"""Seconds `EventHub.stop` waits for each of its readers to end."""
EPHEMERAL_HEALTHY_AFTER = 5.0
"""Seconds a typing-event subscription must have lived before its failure counts as a new
outage (logged at warning again) rather than the same one going on."""


def _settled(task: asyncio.Task[None]) -> None:
    """Take the outcome of a reader that ended after `stop` gave up on it (no "exception was
    never retrieved" at exit)."""
    if not task.cancelled():
        task.exception()


Filter = Callable[[Event], bool]
Key = tuple[str, str]


def event_key(event: Event) -> Key | None:
    """The (channel, contact address) an event is about: how per-customer sockets subscribe."""
    if event.conversation is not None:
        return (event.conversation.channel, event.conversation.contact.address)
    if event.message is not None and event.message.contact is not None:
        return (event.message.channel, event.message.contact.address)
    return None


class Overflow(Exception):
    """The subscriber was too slow; resume from its last cursor."""


class Subscription:
    def __init__(self, hub: EventHub, accept: Filter, maxsize: int, key: Key | None) -> None:
        self._hub = hub
        self._accept = accept
        self.key = key
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.overflowed or not self._accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._queue = asyncio.Queue(1)
            self._queue.put_nowait(None)

    async def get(self) -> Event:
        """Return the next live event; raise Overflow if this subscriber fell behind."""
        event = await self._queue.get()
        if event is None:
            raise Overflow()
        return event

    async def get_many(self, limit: int = 256) -> list[Event]:
        """Wait for the next live event, then take it and those queued after it, up to
        `limit`, in order (a socket writes them together); raise Overflow if this subscriber
        fell behind."""
        queue = self._queue
        first = await queue.get()
        if first is None:
            raise Overflow()
        events = [first]
        while len(events) < limit and not queue.empty():
            # Only a replaced queue (after an overflow) holds None, and then as its only item.
            event = queue.get_nowait()
            assert event is not None
            events.append(event)
        return events

    def close(self) -> None:
        self._hub._remove(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()


class EventHub:
    def __init__(self, store: Store, *, poll_timeout: float = 5.0) -> None:
        self.store = store
        self.poll_timeout = poll_timeout
        self._subscriptions: set[Subscription] = set()
        self._by_key: dict[Key, set[Subscription]] = {}
        self.cursor: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ephemeral_task: asyncio.Task[None] | None = None
        self.progress = asyncio.Condition()

    def subscribe(
        self, accept: Filter = lambda e: True, maxsize: int = 10_000, key: Key | None = None
    ) -> Subscription:
        """Subscribe to live events; with `key`, only events about that (channel, address).

        Keyed subscriptions are found by a dict lookup, so thousands of visitor sockets do not
        each inspect every event.
        """
        subscription = Subscription(self, accept, maxsize, key)
        if key is None:
            self._subscriptions.add(subscription)
        else:
            self._by_key.setdefault(key, set()).add(subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        if subscription.key is None:
            self._subscriptions.discard(subscription)
            return
        keyed = self._by_key.get(subscription.key)
        if keyed is not None:
            keyed.discard(subscription)
            if not keyed:
                del self._by_key[subscription.key]

    def _offer(self, event: Event) -> None:
        for subscription in tuple(self._subscriptions):
            subscription.offer(event)
        key = event_key(event)
        if key is not None and key in self._by_key:
            for subscription in tuple(self._by_key[key]):
                subscription.offer(event)

    async def broadcast(self, event: Event) -> None:
        """Fan out an ephemeral event (typing indicators) to every node's subscribers.

        It is not stored and carries no cursor: a subscriber that misses it loses nothing
        of the conversation. It travels through the store, so sockets on other nodes get it.
        """
        await self.store.publish_ephemeral(event)

    async def _run_ephemeral(self) -> None:
        outage = LoopOutage(log, "hub.store_unavailable")
        while True:
            subscribed = time.monotonic()
            try:
                async for event in self.store.ephemeral_events():
                    self._offer(event)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                # Nothing says a subscription works until it fails: one that lived a while
                # before failing means the store was back in between.
                if time.monotonic() - subscribed > EPHEMERAL_HEALTHY_AFTER:
                    outage.succeeded()
                outage.failed(task="ephemeral", error=str(exc))
            except Exception:
                log.exception("hub.ephemeral_failed")
            await asyncio.sleep(1.0)  # back off before re-subscribing after a lost connection

    async def start(self) -> None:
        self.cursor = await self.store.last_cursor()
        self._task = asyncio.create_task(self._run(), name="event-hub")
        self._ephemeral_task = asyncio.create_task(
            self._run_ephemeral(), name="event-hub-ephemeral"
        )

    async def stop(self) -> None:
        """Stop both readers, waiting at most STOP_WAIT for each. A reader blocked in the
        Redis client does not always take its cancellation (seen with pub/sub cancelled right
        after subscribing): shutdown must not wait for it for ever. Closing the store then
        closes its connection, which ends it."""
        for task in (self._task, self._ephemeral_task):
            if task is None:
                continue
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT)
            if done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
            else:
                log.warning("hub.stop_timeout", task=task.get_name())
                task.add_done_callback(_settled)
        self._task = self._ephemeral_task = None

    async def _run(self) -> None:
        outage = LoopOutage(log, "hub.store_unavailable")
        while True:
            try:
                events = await self.store.wait_events(self.cursor, self.poll_timeout)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:  # an outage, not a bug: no traceback, one warning
                outage.failed(task="read", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("hub.read_failed")
                await asyncio.sleep(1.0)
                continue
            outage.succeeded()
            for event in events:
                self._offer(event)
                self.cursor = event.cursor
            if events:
                async with self.progress:
                    self.progress.notify_all()

    async def wait_past(self, cursor: str | None) -> None:
        """Wait until the hub has fanned out everything up to `cursor` (tests and hand-offs)."""
        if cursor is None:
            return
        async with self.progress:
            await self.progress.wait_for(lambda: (self.cursor or "") >= cursor)
