"""Automatic distribution: hand the oldest waiting conversations to online agents with room.

Runs after anything that may let an assignment happen (a new conversation, an agent coming
online, an agent's load going down) and from the scheduler's sweep. Each assignment is a
compare-and-set with the agent's `max_active` checked in the same store step, so two runs (on one
node or many) can neither assign a conversation twice nor overfill an agent.
"""

from __future__ import annotations

import asyncio

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import Directory
from gateway.errors import TransitionError, VersionConflict
from gateway.model import Event, State
from gateway.routing import AgentCandidate, choose_agent
from gateway.store.base import Store

log = structlog.get_logger("gateway.distribution")

BATCH = 50


class Distributor:
    def __init__(self, store: Store, clock: Clock, directory: Directory) -> None:
        self.store = store
        self.clock = clock
        self.directory = directory
        self._locks: dict[str, asyncio.Lock] = {}

    async def distribute(self, queue: str) -> list[Event]:
        """Assign what can be assigned in one queue, oldest first; return the events."""
        info = self.directory.queues.get(queue)
        if info is None or not info.automatic:
            return []
        lock = self._locks.setdefault(queue, asyncio.Lock())
        async with lock:
            return await self._distribute(queue, info.strategy)

    async def distribute_all(self) -> list[Event]:
        events: list[Event] = []
        for name in self.directory.queues:
            events.extend(await self.distribute(name))
        return events

    async def on_agent_change(self, agent: str) -> list[Event]:
        """An agent came online or freed capacity: try their automatic queues."""
        info = self.directory.agents.get(agent)
        if info is None:
            return []
        events: list[Event] = []
        for queue in sorted(info.queues):
            events.extend(await self.distribute(queue))
        return events

    async def _distribute(self, queue: str, strategy: str) -> list[Event]:
        events: list[Event] = []
        rr_key = f"rr:{queue}"
        while True:
            waiting = await self.store.list_conversations(
                State.WAITING, queues=[queue], limit=BATCH
            )
            if not waiting:
                return events
            presence = await self.store.presence()
            loads = await self.store.agent_loads()
            # Each agent's place in the queue's config order is the round-robin order, kept
            # for the online ones only, so the rotation survives an agent going offline.
            on_queue = self.directory.agents_on(queue)
            rotation = [a.id for a in on_queue]
            agents = {
                a.id: (order, a)
                for order, a in enumerate(on_queue)
                if presence.get(a.id) is not None and presence[a.id].online
            }
            last = await self.store.kv_get(rr_key)
            progressed = False
            for conversation in waiting:
                candidates = [
                    AgentCandidate(a.id, loads.get(a.id, 0), a.max_active, order)
                    for order, a in agents.values()
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
