"""Agent actions on conversations: accept, pending, resume, close, transfer.

Each action reads the conversation, asks the pure lifecycle for the transition and writes it
with compare-and-set. A version conflict means someone else changed it meanwhile: the action is
decided again on the fresh state, which is how the loser of an accept race learns that the
conversation is now `already_taken` (409) instead of silently overwriting the winner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import AgentInfo, Directory
from gateway.errors import NotFound, TransitionError, VersionConflict
from gateway.ingest import expire_lapsed_window
from gateway.lifecycle import Transition
from gateway.model import Conversation, Event, State
from gateway.store.base import Store

log = structlog.get_logger("gateway.actions")

CAS_ATTEMPTS = 5
TAKE_BACK_LIMIT = 1000
"""At most this many pending conversations of an agent are looked at when they come back."""
Decide = Callable[[Conversation, dict[str, int]], Transition]
AfterChange = Callable[[Transition], Awaitable[None]]


class Actions:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        directory: Directory,
        after_change: AfterChange | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.directory = directory
        self.after_change = after_change

    async def visible(self, conversation_id: str, agent: AgentInfo) -> Conversation:
        """Return a conversation the agent may see: on one of their queues or assigned to them."""
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None:
            raise NotFound(f"no conversation {conversation_id}")
        if conversation.queue not in agent.queues and conversation.agent != agent.id:
            raise TransitionError(
                "not_on_queue", f"agent {agent.id} is not on queue {conversation.queue}"
            )
        return conversation

    async def _apply(
        self,
        conversation_id: str,
        agent: AgentInfo,
        decide: Decide,
        *,
        max_active: int | None = None,
        action: str,
        to_active: bool = False,
        after_change: bool = True,
    ) -> tuple[Conversation, tuple[Event, ...]]:
        for _ in range(CAS_ATTEMPTS):
            conversation = await self.visible(conversation_id, agent)
            if to_active and conversation.channel not in self.directory.channels:
                # Its channel was removed from the config: no reply can reach the customer,
                # so taking it on would only fill the agent's `max_active` for nothing.
                raise TransitionError(
                    "invalid_transition",
                    f"channel {conversation.channel} is not configured: nobody can answer here",
                )
            if lifecycle.expire_window(conversation, self.clock.now()).changed:
                # Its window lapsed, its timer has not run yet: it is inactive by the rules,
                # so make it so and decide the action on that (see `expire_lapsed_window`).
                await expire_lapsed_window(self.store, conversation_id, self.clock)
                continue
            loads = await self.store.agent_loads()
            transition = decide(conversation, loads)
            if not transition.changed:  # nothing to write (an idempotent retry)
                return conversation, ()
            try:
                stored, events = await self.store.update_conversation(
                    transition, conversation.version, max_active=max_active
                )
            except VersionConflict:
                continue
            log.info(
                f"conversation.{action}",
                conversation_id=conversation_id,
                agent=agent.id,
                state=str(stored.state),
            )
            if after_change and self.after_change is not None:
                await self.after_change(transition)
            return stored, events
        raise VersionConflict(f"conversation {conversation_id} kept changing, try again")

    async def accept(
        self, conversation_id: str, agent: AgentInfo
    ) -> tuple[Conversation, tuple[Event, ...]]:
        return await self._apply(
            conversation_id,
            agent,
            lambda c, loads: lifecycle.accept(
                c, agent.context(loads.get(agent.id, 0)), self.clock.now()
            ),
            max_active=agent.max_active,
            action="accepted",
            to_active=True,
        )

    async def set_pending(
        self, conversation_id: str, agent: AgentInfo
    ) -> tuple[Conversation, tuple[Event, ...]]:
        return await self._apply(
            conversation_id,
            agent,
            lambda c, _: lifecycle.set_pending(
                c, agent.id, self.clock.now(), self.directory.queue_policy(c.queue)
            ),
            action="pending",
        )

    async def resume(
        self, conversation_id: str, agent: AgentInfo, *, after_change: bool = True
    ) -> tuple[Conversation, tuple[Event, ...]]:
        return await self._apply(
            conversation_id,
            agent,
            lambda c, loads: lifecycle.resume(
                c, agent.context(loads.get(agent.id, 0)), self.clock.now()
            ),
            max_active=agent.max_active,
            action="resumed",
            to_active=True,
            after_change=after_change,
        )

    async def take_back(self, agent: AgentInfo) -> list[str]:
        """Resume the conversations an agent lost by dropping off (pending, `agent_offline`),
        as they come back online, before automatic distribution hands them new ones: oldest in
        the queue first, as far as their `max_active` and each channel's window allow.

        They were the agent's work in progress, and the customers wait on them; the agent could
        resume them by hand, but distribution ran first on their return and filled them to
        `max_active`, so every resume was refused and, without `requeue_after`, those customers
        stayed pending for good (routing audit). Set-aside conversations stay as they are.
        Returns the ids resumed; the caller lets distribution run afterwards."""
        pending = await self.store.list_conversations(
            State.PENDING, agent=agent.id, limit=TAKE_BACK_LIMIT
        )
        dropped = sorted(
            (c for c in pending if c.pending_reason == lifecycle.PENDING_REASONS["agent_offline"]),
            key=lambda c: (c.queued_at, c.id),
        )
        resumed: list[str] = []
        for conversation in dropped:
            try:
                # No distribution between them: it would fill the room the next one needs.
                # The caller runs it once they are all back.
                await self.resume(conversation.id, agent, after_change=False)
            except TransitionError as exc:
                if exc.code == "max_active_reached":
                    break
                continue  # its window closed, it moved on meanwhile: it stays as it is
            except (VersionConflict, NotFound):
                continue
            resumed.append(conversation.id)
        if resumed:
            log.info("presence.taken_back", agent=agent.id, conversations=resumed)
        return resumed

    async def close(
        self, conversation_id: str, agent: AgentInfo
    ) -> tuple[Conversation, tuple[Event, ...]]:
        return await self._apply(
            conversation_id,
            agent,
            lambda c, loads: lifecycle.close(
                c, agent.context(loads.get(agent.id, 0)), self.clock.now()
            ),
            action="closed",
        )

    async def transfer(
        self,
        conversation_id: str,
        agent: AgentInfo,
        *,
        to_queue: str | None,
        to_agent: str | None,
    ) -> tuple[Conversation, tuple[Event, ...]]:
        if to_queue is not None and to_queue not in self.directory.queues:
            raise TransitionError("invalid_request", f"unknown queue {to_queue!r}")
        target = None
        if to_agent is not None:
            target = self.directory.agents.get(to_agent)
            if target is None:
                raise TransitionError("invalid_request", f"unknown agent {to_agent!r}")
            await self._require_online(target.id, agent.id)

        def decide(c: Conversation, loads: dict[str, int]) -> Transition:
            return lifecycle.transfer(
                c,
                agent.id,
                self.clock.now(),
                to_queue=to_queue,
                to_agent=target.context(loads.get(target.id, 0)) if target else None,
                policy=self.directory.policy(c.channel),
            )

        return await self._apply(
            conversation_id,
            agent,
            decide,
            max_active=target.max_active if target else None,
            action="transferred",
        )

    async def _require_online(self, target: str, caller: str) -> None:
        """Refuse handing a conversation to an agent who went offline: nobody would answer it,
        and with no connection of theirs left to close, no grace would ever set it pending.
        An agent who never opened a stream (working over REST alone) has no presence to judge
        by, so they may still receive one (README: their conversations stay theirs)."""
        if target == caller:
            return
        presence = (await self.store.presence()).get(target)
        if presence is not None and not presence.online:
            raise TransitionError(
                "agent_offline",
                f"agent {target} is offline: transfer to their queue, or to an agent online",
            )


def is_open_for_agent(conversation: Conversation, agent_id: str) -> bool:
    """Tell whether the agent holds the conversation (active or pending, assigned to them)."""
    return conversation.agent == agent_id and conversation.state in (State.ACTIVE, State.PENDING)
