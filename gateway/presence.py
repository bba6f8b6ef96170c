"""Agent presence: an agent is online while any of their live sockets is open, on any node.

The store keeps connections (so presence is shared by every node) and arms the
`agent_disconnect_grace` deadline when an agent's last connection goes; the scheduler then
sets their active conversations pending. Coming online also lets automatic distribution hand
the agent waiting work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import structlog

from gateway.clock import Clock
from gateway.directory import AgentInfo
from gateway.distribution import Distributor
from gateway.store.base import Store

log = structlog.get_logger("gateway.presence")


class Presence:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        distributor: Distributor,
        node: str,
        grace: timedelta,
        poke: Callable[[], None],
    ) -> None:
        self.store = store
        self.clock = clock
        self.distributor = distributor
        self.node = node
        self.grace = grace
        self.poke = poke
        self.changed = asyncio.Condition()
        """Notified after every recorded connect and disconnect (tests, hand-offs)."""

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def connected(self, agent: AgentInfo, connection: str) -> None:
        await self.store.presence_connect(agent.id, connection, self.node, self.clock.now())
        await self._notify()
        try:
            await self.distributor.on_agent_change(agent.id)
        except Exception:  # the scheduler's sweep retries distribution
            log.exception("presence.distribute_failed", agent=agent.id)

    async def disconnected(self, agent: AgentInfo, connection: str) -> None:
        last = await self.store.presence_disconnect(
            agent.id, connection, self.clock.now(), self.grace
        )
        if last:
            log.info("presence.offline", agent=agent.id)
            self.poke()
        await self._notify()

    async def startup(self) -> list[str]:
        agents = await self.store.presence_startup(self.node, self.clock.now(), self.grace)
        if agents:
            log.info("presence.recovered", agents=agents)
        return agents
