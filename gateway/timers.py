"""One scheduler for every deadline: window expiry, no-agent timeout, presence grace, requeue.

Deadlines are rows in the store written in the same step as the conversation state they belong
to, never asyncio tasks per conversation, so they survive restarts and any node may fire them.
`claim_due` leases what is due (a node that dies while holding a lease only delays the deadline
by the lease), and the handler applies the lifecycle through compare-and-set, so a deadline
changes the conversation once however many schedulers race for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import Directory
from gateway.errors import StoreUnavailable, VersionConflict
from gateway.lifecycle import QueuePresence
from gateway.model import Conversation, Event, State
from gateway.outagelog import LoopOutage
from gateway.store.base import (
    AGENT_TARGET,
    CONVERSATION_TARGET,
    GRACE_KIND,
    AgentPresence,
    Deadline,
    Store,
)

log = structlog.get_logger("gateway.timers")

Handler = Callable[[Deadline], Awaitable[None]]
BatchHandler = Callable[[list[Deadline]], Awaitable[list[Deadline]]]
"""Fires what it can of a batch at once and returns the deadlines left to the one-by-one path."""
LagObserver = Callable[[float], None]

CAS_ATTEMPTS = 5


class Scheduler:
    """Claims due deadlines and hands each to the handler; `run_once` is the unit tests drive."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        handler: Handler,
        *,
        lease: timedelta = timedelta(seconds=30),
        batch: int = 500,
        concurrency: int = 64,
        poll_interval: float = 1.0,
        observe_lag: LagObserver | None = None,
        sweep: Callable[[], Awaitable[object]] | None = None,
        node: str | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.store = store
        self.batch_handler = batch_handler
        self.node = node
        """Leases are taken in this node's name, so they are released if the node dies."""
        self.clock = clock
        self.handler = handler
        self.lease = lease
        self.batch = batch
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.observe_lag = observe_lag
        self.sweep = sweep
        self._wake = asyncio.Event()
        self._stopping = False
        self._outage = LoopOutage(log, "timers.store_unavailable")

    def poke(self) -> None:
        """Wake the loop early (a new deadline may be due sooner than it planned)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Fire everything due now; return how many deadlines were handled."""
        fired = 0
        while True:
            now = self.clock.now()
            due = await self.store.claim_due(now, self.batch, self.lease, node=self.node)
            if self.observe_lag is not None:
                for deadline in due:
                    self.observe_lag((now - deadline.due_at).total_seconds())
            rest = due
            if self.batch_handler is not None and due:
                try:
                    rest = await self.batch_handler(due)
                except StoreUnavailable:  # one by one would fail the same way: end the pass
                    raise
                except Exception:  # fall back to one by one; leases make a retry safe
                    log.exception("timers.batch_failed", count=len(due))
            # Handlers of one batch run side by side so their writes share group commits.
            for start in range(0, len(rest), self.concurrency):
                chunk = rest[start : start + self.concurrency]
                await asyncio.gather(*(self._fire(d) for d in chunk))
            fired += len(due)
            if len(due) < self.batch:
                return fired

    async def _fire(self, deadline: Deadline) -> None:
        try:
            await self.handler(deadline)
        except StoreUnavailable as exc:  # an outage, not a bug: no traceback, one warning
            self._outage.failed(target=deadline.target, kind=deadline.kind, error=str(exc))
        except Exception:  # the lease expires and another pass retries it
            log.exception("timers.handler_failed", target=deadline.target, kind=deadline.kind)

    async def run_forever(self) -> None:
        """Fire deadlines as they come due until `stop`; sleeps until the next one or a poke."""
        while not self._stopping:
            try:
                await self.run_once()
                if self.sweep is not None:
                    await self.sweep()
                next_due = await self.store.next_due()
                self._outage.succeeded()
            except StoreUnavailable as exc:  # an outage, not a bug: no traceback, one warning
                self._outage.failed(error=str(exc))
                next_due = None
            except Exception:
                log.exception("timers.pass_failed")
                next_due = None
            delay = self.poll_interval
            if next_due is not None:
                delay = min(delay, max(0.0, (next_due - self.clock.now()).total_seconds()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()


def queue_presence(
    directory: Directory, queue: str, presence: dict[str, AgentPresence]
) -> QueuePresence:
    """Summarize whether any agent of `queue` is online, else when one was last seen."""
    last_seen = None
    for agent in directory.agents_on(queue):
        state = presence.get(agent.id)
        if state is None:
            continue
        if state.online:
            return QueuePresence(online=True)
        if state.last_seen_at is not None and (last_seen is None or state.last_seen_at > last_seen):
            last_seen = state.last_seen_at
    return QueuePresence(online=False, last_seen_at=last_seen)


def _log_fired(kind: str, conversation: Conversation) -> None:
    """What a timer did to a conversation: which timer, and the state it left it in."""
    log.info(
        "timers.fired",
        kind=kind,
        conversation_id=conversation.id,
        state=str(conversation.state),
        inactive_reason=conversation.inactive_reason,
        pending_reason=conversation.pending_reason,
    )


class DeadlineHandler:
    """Applies the lifecycle rule of each fired deadline through the store's compare-and-set."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        directory: Directory,
        on_events: Callable[[list[Event]], Awaitable[None]] | None = None,
        take_back: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.directory = directory
        self.on_events = on_events
        self.take_back = take_back
        """Resumes what an agent lost by dropping off (by agent id): for an agent who came
        back while their grace was setting their conversations pending (see _agent_grace)."""

    async def __call__(self, deadline: Deadline) -> None:
        if deadline.target.startswith(CONVERSATION_TARGET):
            await self._conversation(deadline, deadline.target[len(CONVERSATION_TARGET) :])
        elif deadline.target.startswith(AGENT_TARGET) and deadline.kind == GRACE_KIND:
            await self._agent_grace(deadline, deadline.target[len(AGENT_TARGET) :])
        else:
            log.warning("timers.unknown_deadline", target=deadline.target, kind=deadline.kind)
            await self.store.clear_deadline(deadline.target, deadline.kind, deadline.due_at)

    async def batch(self, deadlines: list[Deadline]) -> list[Deadline]:
        """Fire a batch's conversation deadlines with one read and one write for all of them.

        Returns what it did not settle (other targets, lost compare-and-set races) for the
        one-by-one path, which re-reads and decides again.
        """
        mine = [d for d in deadlines if d.target.startswith(CONVERSATION_TARGET)]
        rest = [d for d in deadlines if not d.target.startswith(CONVERSATION_TARGET)]
        if not mine:
            return rest
        ids = {d.target[len(CONVERSATION_TARGET) :] for d in mine}
        conversations = await self.store.get_conversations(ids)
        presence = None
        if any(d.kind == lifecycle.DEADLINE_NO_AGENT for d in mine):
            presence = await self.store.presence()
        now = self.clock.now()
        updates: list[tuple[Deadline, lifecycle.Transition]] = []
        stale: list[Deadline] = []
        planned: set[str] = set()
        for deadline in mine:
            conversation_id = deadline.target[len(CONVERSATION_TARGET) :]
            conversation = conversations.get(conversation_id)
            if conversation is None:
                stale.append(deadline)
                continue
            if conversation_id in planned:  # two kinds due at once: decide the second later
                rest.append(deadline)
                continue
            transition = self._decide(conversation, deadline.kind, now, presence)
            if transition.changed:
                updates.append((deadline, transition))
                planned.add(conversation_id)
            else:
                stale.append(deadline)
        results = await self.store.update_conversations(
            [(t, conversations[t.conversation.id].version) for _, t in updates]
        )
        fired: list[Event] = []
        for (deadline, _), result in zip(updates, results, strict=True):
            if isinstance(result, VersionConflict):
                rest.append(deadline)
                continue
            stored, events = result
            fired.extend(events)
            if events:  # one line per conversation a timer changed, as `_conversation` logs
                _log_fired(deadline.kind, stored)
        await asyncio.gather(
            *(self.store.clear_deadline(d.target, d.kind, d.due_at) for d in stale)
        )
        if fired and self.on_events is not None:
            await self.on_events(fired)
        return rest

    def _decide(
        self,
        conversation: Conversation,
        kind: str,
        now: datetime,
        presence: dict[str, AgentPresence] | None,
    ) -> lifecycle.Transition:
        """The lifecycle's verdict on a due deadline. Only the no-agent timeout looks at who is
        online (`presence`, read by the caller once for all the deadlines it decides)."""
        queue_state = QueuePresence(online=False)
        if presence is not None and kind == lifecycle.DEADLINE_NO_AGENT:
            queue_state = queue_presence(self.directory, conversation.queue, presence)
        return lifecycle.on_deadline(
            conversation, kind, now, self.directory.policy(conversation.channel), queue_state
        )

    async def _conversation(self, deadline: Deadline, conversation_id: str) -> None:
        for _ in range(CAS_ATTEMPTS):
            conversation = await self.store.get_conversation(conversation_id)
            if conversation is None:
                await self.store.clear_deadline(deadline.target, deadline.kind, deadline.due_at)
                return
            now = self.clock.now()
            presence = None
            if deadline.kind == lifecycle.DEADLINE_NO_AGENT:
                presence = await self.store.presence()
            transition = self._decide(conversation, deadline.kind, now, presence)
            if not transition.changed:
                await self.store.clear_deadline(deadline.target, deadline.kind, deadline.due_at)
                return
            try:
                _, events = await self.store.update_conversation(transition, conversation.version)
            except VersionConflict:
                continue
            if events:
                _log_fired(deadline.kind, transition.conversation)
            if self.on_events is not None:
                await self.on_events(list(events))
            return
        log.warning("timers.conversation_busy", conversation_id=conversation_id)

    async def _agent_grace(self, deadline: Deadline, agent: str) -> None:
        """The agent's last connection went a grace ago: their active conversations go
        pending, unless they came back.

        The grace is this node's: a node configured with a longer one (a rolling config
        change, a node not restarted yet) moves the deadline to when its own grace ends,
        never drops it, or the agent's conversations would stay active with nobody there.
        """
        presence = (await self.store.presence()).get(agent)
        now = self.clock.now()
        grace = self.directory.agent_disconnect_grace
        gone_since = None
        if presence is not None and not presence.online:
            gone_since = presence.last_seen_at
        if gone_since is not None and gone_since + grace > now:
            await self.store.set_deadline(deadline.target, deadline.kind, gone_since + grace)
            log.info("timers.agent_grace_extended", agent=agent, due=gone_since + grace)
            return
        if gone_since is not None:
            events: list[Event] = []
            for conversation in await self.store.list_conversations(
                State.ACTIVE, agent=agent, limit=10_000
            ):
                if await self._online(agent):
                    break  # back meanwhile: the rest stay active
                events.extend(await self._agent_lost(conversation.id, agent))
            log.info("timers.agent_offline", agent=agent, conversations=len(events))
            if self.on_events is not None and events:
                await self.on_events(events)
            if events and self.take_back is not None and await self._online(agent):
                # Back while this ran (on another node, say): their return took back only what
                # was pending by then, and what went pending after would stay so (audit: 286
                # of 300 conversations pending with the agent online).
                await self.take_back(agent)
        await self.store.clear_deadline(deadline.target, deadline.kind, deadline.due_at)

    async def _online(self, agent: str) -> bool:
        presence = (await self.store.presence()).get(agent)
        return presence is not None and presence.online

    async def _agent_lost(self, conversation_id: str, agent: str) -> list[Event]:
        for _ in range(CAS_ATTEMPTS):
            conversation = await self.store.get_conversation(conversation_id)
            if conversation is None:
                return []
            transition = lifecycle.agent_lost(
                conversation,
                agent,
                self.clock.now(),
                self.directory.queue_policy(conversation.queue),
                self.directory.policy(conversation.channel),
            )
            if not transition.changed:
                return []
            try:
                _, events = await self.store.update_conversation(transition, conversation.version)
            except VersionConflict:
                continue
            return list(events)
        return []
