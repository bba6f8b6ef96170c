"""Agent presence: an agent is online while any of their live sockets is open, on any node.

The store keeps connections (so presence is shared by every node) and arms the
`agent_disconnect_grace` deadline when an agent's last connection goes; the scheduler then
sets their active conversations pending. Coming online gives the agent back, first, the
conversations that went pending that way (`Actions.take_back`), then lets automatic
distribution hand them waiting work.

A node that dies cannot say its sockets closed, so every node heartbeats (`run_heartbeats`)
and reaps nodes whose heartbeat lapsed: their connections are dropped and their agents' grace
starts, and the deadline leases they held are released. The TTL defaults to a third of the
grace (between 2 s and 10 s), so a crash delays an agent's grace by little, while a node whose
event loop stalls for a moment is not given up on.

The store can be out of reach when a socket opens or closes (a Redis restart or failover). A
connection the store could not record is refused (the socket is not opened), and a close the
store could not record is kept here and settled by the next heartbeat that reaches the store,
with the time it really happened: otherwise the store would keep an agent with no socket
online for as long as this node lives, and their conversations would never go pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from gateway.clock import Clock
from gateway.directory import AgentInfo
from gateway.distribution import Distributor
from gateway.errors import StoreUnavailable
from gateway.outagelog import LoopOutage
from gateway.store.base import Store

log = structlog.get_logger("gateway.presence")


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """A connection that is gone here but may still be recorded in the store."""

    agent: str
    at: datetime


class Presence:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        distributor: Distributor,
        node: str,
        grace: timedelta,
        poke: Callable[[], None],
        heartbeat_ttl: timedelta | None = None,
        take_back: Callable[[AgentInfo], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.distributor = distributor
        self.node = node
        self.grace = grace
        self.poke = poke
        self.heartbeat_ttl = heartbeat_ttl or default_heartbeat_ttl(grace)
        self.take_back = take_back
        """Resumes what the agent lost by dropping off, before distribution runs for them."""
        self._live: dict[str, AgentInfo] = {}
        """This node's open connections, to record again if the node was reaped by mistake."""
        self._unsettled: dict[str, _Unsettled] = {}
        """Connections gone here whose removal the store has not confirmed (it was down)."""
        self.changed = asyncio.Condition()
        """Notified after every recorded connect and disconnect (tests, hand-offs)."""

    @property
    def unrecorded(self) -> int:
        """How many closed sockets the store has not been told about yet (it was down)."""
        return len(self._unsettled)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def connected(self, agent: AgentInfo, connection: str) -> None:
        """Record a new socket; raises if the store could not (the caller refuses the socket)."""
        try:
            await self.store.presence_connect(agent.id, connection, self.node, self.clock.now())
        except BaseException:
            # The write may have landed before the error: take it back once the store answers.
            self._unsettled[connection] = _Unsettled(agent.id, self.clock.now())
            raise
        self._live[connection] = agent
        await self._notify()
        if self.take_back is not None:
            try:
                await self.take_back(agent)
            except Exception:  # the agent can still resume them by hand
                log.exception("presence.take_back_failed", agent=agent.id)
        try:
            await self.distributor.on_agent_change(agent.id)
        except Exception:  # the scheduler's sweep retries distribution
            log.exception("presence.distribute_failed", agent=agent.id)

    async def disconnected(self, agent: AgentInfo, connection: str) -> None:
        """Forget a closed socket; if the store cannot be told now, the heartbeat tells it."""
        if self._live.pop(connection, None) is None:
            return  # never recorded: refused at connect (kept to settle if it landed after all)
        gone = _Unsettled(agent.id, self.clock.now())
        try:
            await self._settle(connection, gone)
        except Exception as exc:
            self._unsettled[connection] = gone
            log.warning(
                "presence.disconnect_unrecorded",
                agent=agent.id,
                connection=connection,
                error=f"{type(exc).__name__}: {exc}",
            )
        await self._notify()

    async def _settle(self, connection: str, gone: _Unsettled) -> None:
        """Tell the store a connection is gone, as of when it went (the grace starts then)."""
        last = await self.store.presence_disconnect(gone.agent, connection, gone.at, self.grace)
        self._unsettled.pop(connection, None)
        if last:
            log.info("presence.offline", agent=gone.agent)
            self.poke()

    async def _settle_unrecorded(self) -> None:
        """Record the closes the store missed while it was down (connection ids are never
        reused, so none of them can be live again)."""
        unsettled = tuple(self._unsettled.items())
        for connection, gone in unsettled:
            await self._settle(connection, gone)
        if unsettled:
            log.info("presence.disconnects_settled", count=len(unsettled))
            await self._notify()

    async def startup(self) -> list[str]:
        now = self.clock.now()
        await self.store.node_heartbeat(self.node, now, self.heartbeat_ttl)
        agents = await self.store.presence_startup(self.node, now, self.grace)
        if agents:
            log.info("presence.recovered", agents=agents)
        return agents

    async def heartbeat(self) -> list[str]:
        """Say this node is alive, record what the store missed while it was out of reach
        (closed sockets; after a lapse, the open ones too), then reap dead nodes; return the
        agents they left offline."""
        now = self.clock.now()
        if not await self.store.node_heartbeat(self.node, now, self.heartbeat_ttl) and self._live:
            # Our heartbeat lapsed (a long pause): others may have dropped our sockets.
            log.warning("presence.heartbeat_lapsed", node=self.node, connections=len(self._live))
            for connection, agent in tuple(self._live.items()):
                await self.store.presence_connect(agent.id, connection, self.node, now)
        await self._settle_unrecorded()
        offline = await self.store.reap_nodes(now, self.grace)
        if offline:
            log.info("presence.node_reaped", agents=offline)
            self.poke()
            await self._notify()
        return offline

    async def run_heartbeats(self) -> None:
        """Heartbeat four times per TTL until cancelled; a failed beat is retried next time."""
        interval = self.heartbeat_ttl.total_seconds() / 4
        outage = LoopOutage(log, "presence.heartbeat_failed")
        while True:
            try:
                await self.heartbeat()
                outage.succeeded()
            except StoreUnavailable as exc:  # an outage: one warning, not a traceback a beat
                outage.failed(node=self.node, error=str(exc))
            except Exception:
                log.exception("presence.heartbeat_failed", node=self.node)
            await asyncio.sleep(interval)

    async def leave(self) -> None:
        """A clean shutdown: this node's sockets are gone now, not after the TTL."""
        self._live.clear()
        self._unsettled.clear()  # dropping the node drops every connection it recorded
        await self.store.presence_drop_node(self.node, self.clock.now(), self.grace)


def default_heartbeat_ttl(grace: timedelta) -> timedelta:
    """A third of the grace, within [2 s, 10 s]: a dead node is noticed well within the grace."""
    return min(timedelta(seconds=10), max(timedelta(seconds=2), grace / 3))
