"""Automatic distribution: hand the oldest waiting conversations to online agents with room.

Runs after anything that may let an assignment happen (a new conversation, an agent coming
online, an agent's load going down) and from the scheduler's sweep. Each assignment is a
compare-and-set with the agent's `max_active` checked in the same store step, so two runs (on one
node or many) can neither assign a conversation twice nor overfill an agent.

A run reads the queue's waiting conversations, who is online and every agent's load: with
hundreds of agents that is milliseconds of store reads, and every new conversation asks for a
run. So requests for a queue are grouped, as commits are: a request made while a run is going
waits for the next run, which starts when that one ends and serves every request made
meanwhile. Each caller still returns only after a run that began after its request (so it saw
the caller's change), and a burst of a thousand webhooks costs a few runs, not a thousand,
each queued behind the one before. (A scale audit with 500 agents online: 8 webhooks/s.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import AgentInfo, Directory
from gateway.errors import TransitionError, VersionConflict
from gateway.model import Event, State
from gateway.routing import AgentCandidate, choose_agent
from gateway.store.base import Store

log = structlog.get_logger("gateway.distribution")

BATCH = 50


@dataclass
class _Runs:
    """One queue's runs: the next one asked for (not started yet), and the task running them."""

    next: asyncio.Future[list[Event]] | None = None
    driver: asyncio.Task[None] | None = None


def _retrieved(future: asyncio.Future[list[Event]]) -> None:
    """A run's error is its callers'; if they all went away, it is read here, not warned about."""
    if not future.cancelled():
        future.exception()


class Distributor:
    def __init__(self, store: Store, clock: Clock, directory: Directory) -> None:
        self.store = store
        self.clock = clock
        self.directory = directory
        self._runs: dict[str, _Runs] = {}
        self.runs = 0
        """How many runs started (diagnostics, tests: requests per run)."""

    async def distribute(self, queue: str) -> list[Event]:
        """Assign what can be assigned in one queue, oldest first; return the events of the run
        that did it (which may have served other callers too: see the module docstring)."""
        info = self.directory.queues.get(queue)
        if info is None or not info.automatic:
            return []
        runs = self._runs.setdefault(queue, _Runs())
        if runs.next is None:
            runs.next = asyncio.get_running_loop().create_future()
            runs.next.add_done_callback(_retrieved)
        waiting = runs.next
        if runs.driver is None:
            runs.driver = asyncio.create_task(
                self._drive(queue, info.strategy, runs), name=f"distribute-{queue}"
            )
        # Shielded: a caller that goes away (a client hanging up) does not cancel the run that
        # serves the others.
        return await asyncio.shield(waiting)

    async def _drive(self, queue: str, strategy: str, runs: _Runs) -> None:
        """Run while runs are asked for; each run serves every request made before it began."""
        try:
            while runs.next is not None:
                this, runs.next = runs.next, None
                self.runs += 1
                try:
                    this.set_result(await self._distribute(queue, strategy))
                except asyncio.CancelledError:
                    this.cancel()
                    raise
                except Exception as exc:
                    this.set_exception(exc)
        finally:
            runs.driver = None

    async def stop(self) -> None:
        """Cancel the runs going on (shutdown, before the store closes); callers still waiting
        get a cancellation, as a request cut off by the shutdown would."""
        for runs in self._runs.values():
            driver = runs.driver
            if driver is not None:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
            if runs.next is not None:
                runs.next.cancel()
                runs.next = None

    async def distribute_all(self) -> list[Event]:
        events: list[Event] = []
        for name in await self._longest_waiting_first(self.directory.queues):
            events.extend(await self.distribute(name))
        return events

    async def on_agent_change(self, agent: str) -> list[Event]:
        """An agent came online or freed capacity: try their automatic queues, the one whose
        first customer has waited longest first."""
        info = self.directory.agents.get(agent)
        if info is None:
            return []
        events: list[Event] = []
        for queue in await self._longest_waiting_first(info.queues):
            events.extend(await self.distribute(queue))
        return events

    async def _longest_waiting_first(self, queues: Iterable[str]) -> list[str]:
        """The automatic queues among `queues`, the one whose oldest waiting conversation joined
        it first leading (those with nobody waiting last, in name order).

        An agent on several automatic queues is served by them in this order each time they
        free a slot, so a customer of one queue is not passed over for every newer one of
        another: in name order, an agent shared by `rr` and `sales` took every `rr`
        conversation, however recent, before the `sales` ones waiting longer (routing audit).
        """
        automatic = [name for name in queues if self._automatic(name)]
        heads = await self._heads(automatic)
        return sorted(automatic, key=lambda n: (0, heads[n], n) if n in heads else (1, n))

    def _automatic(self, queue: str) -> bool:
        info = self.directory.queues.get(queue)
        return info is not None and info.automatic

    async def _heads(self, queues: Iterable[str]) -> dict[str, tuple[datetime, str]]:
        """Where the customer who has waited longest on each queue stands (`queued_at`, id);
        queues with nobody waiting are left out."""
        heads: dict[str, tuple[datetime, str]] = {}
        for name in queues:
            oldest = await self.store.list_conversations(State.WAITING, queues=[name], limit=1)
            if oldest:
                heads[name] = (oldest[0].queued_at, oldest[0].id)
        return heads

    async def _older_elsewhere(
        self, queue: str, agents: list[AgentInfo]
    ) -> dict[str, tuple[datetime, str]]:
        """For each agent also on other automatic queues, where the customer who has waited
        longest on those stands (`queued_at`, id): a run of `queue` gives them only customers
        who came before that one, so an agent shared by queues takes customers oldest first
        across all of them, not a whole queue before the next (audit: with A0, B0, A1 waiting
        on `qa`, `qb`, `qa`, an agent with room for two got A0 and A1)."""
        others = {
            name
            for agent in agents
            for name in agent.queues
            if name != queue and self._automatic(name)
        }
        heads = await self._heads(others)
        older: dict[str, tuple[datetime, str]] = {}
        for agent in agents:
            theirs = [heads[name] for name in agent.queues if name in heads]
            if theirs:
                older[agent.id] = min(theirs)
        return older

    async def _distribute(self, queue: str, strategy: str) -> list[Event]:
        events: list[Event] = []
        rr_key = f"rr:{queue}"
        while True:
            # Who is online first: with nobody of the queue online (a night, a small team)
            # there is nothing to read further.
            presence = await self.store.presence()
            # Each agent's place in the queue's config order is the round-robin order, kept
            # for the online ones only, so the rotation survives an agent going offline.
            on_queue = self.directory.agents_on(queue)
            rotation = [a.id for a in on_queue]
            agents = {
                a.id: (order, a)
                for order, a in enumerate(on_queue)
                if presence.get(a.id) is not None and presence[a.id].online
            }
            if not agents:
                return events
            waiting = await self.store.list_conversations(
                State.WAITING, queues=[queue], limit=BATCH
            )
            if not waiting:
                return events
            loads = await self.store.agent_loads()
            last = await self.store.kv_get(rr_key)
            older = await self._older_elsewhere(queue, [a for _, a in agents.values()])
            progressed = False
            for conversation in waiting:
                place = (conversation.queued_at, conversation.id)
                candidates = [
                    AgentCandidate(a.id, loads.get(a.id, 0), a.max_active, order)
                    for order, a in agents.values()
                    if a.id not in older or older[a.id] > place
                ]
                chosen = choose_agent(strategy, candidates, last, rotation)
                if chosen is None:
                    return events
                agent = agents[chosen][1]
                now = self.clock.now()
                try:
                    transition = lifecycle.assign(
                        conversation, agent.context(loads.get(chosen, 0)), now
                    )
                    _, stored_events = await self.store.update_conversation(
                        transition, conversation.version, max_active=agent.max_active
                    )
                except VersionConflict:
                    progressed = True  # someone else moved it; re-read the queue
                    break
                except TransitionError as exc:
                    if exc.code == "max_active_reached":
                        loads = await self.store.agent_loads()
                        progressed = True
                        break
                    raise
                loads[chosen] = loads.get(chosen, 0) + 1
                last = chosen
                await self.store.kv_set(rr_key, chosen)
                events.extend(stored_events)
                progressed = True
                log.info(
                    "distribution.assigned",
                    queue=queue,
                    conversation_id=conversation.id,
                    agent=chosen,
                )
            if not progressed:
                return events
