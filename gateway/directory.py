"""Who and what the running gateway knows: channels' policies, queues and agents.

Built once from the validated config; the lifecycle's callers read policies and agent facts
from here so that none of them depends on the config file's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from gateway.lifecycle import AgentContext, ChannelPolicy, QueuePolicy


@dataclass(frozen=True, slots=True)
class AgentInfo:
    id: str
    queues: frozenset[str]
    max_active: int
    name: str | None = None

    def context(self, active_count: int) -> AgentContext:
        return AgentContext(self.id, self.queues, self.max_active, active_count)


@dataclass(frozen=True, slots=True)
class IntegratorInfo:
    """A system reading the whole event log (config `integrators`): no queues, no inbox."""

    name: str


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    distribution: str = "manual"
    strategy: str = "least_busy"
    requeue_after: timedelta | None = None

    @property
    def automatic(self) -> bool:
        return self.distribution == "automatic"

    def policy(self) -> QueuePolicy:
        return QueuePolicy(requeue_after=self.requeue_after)


@dataclass(frozen=True, slots=True)
class Directory:
    channels: Mapping[str, ChannelPolicy] = field(default_factory=dict)
    queues: Mapping[str, QueueInfo] = field(default_factory=dict)
    agents: Mapping[str, AgentInfo] = field(default_factory=dict)
    agent_disconnect_grace: timedelta = timedelta(seconds=30)

    def policy(self, channel: str) -> ChannelPolicy:
        """Return a channel's session rules (none for a channel no longer configured)."""
        return self.channels.get(channel, ChannelPolicy())

    def queue_policy(self, queue: str) -> QueuePolicy:
        info = self.queues.get(queue)
        return info.policy() if info else QueuePolicy()

    def agents_on(self, queue: str) -> list[AgentInfo]:
        """Agents allowed on a queue, in config order (the round-robin order)."""
        return [a for a in self.agents.values() if queue in a.queues]
