"""At startup: open conversations the config no longer accounts for, moved where someone can
act on them.

Removing a queue or an agent from config.yaml is an ordinary change, but the conversations
they held stay in the store. A conversation in a queue that no longer exists is in nobody's
inbox, and agents get `not_on_queue` for every action on it, even when its customer writes
again. One assigned to an agent who no longer exists can be neither answered nor taken over
(`not_assignee`). Nothing would ever move them. So at startup each such conversation goes where
the routing rules now put it (its queue is gone), or back to waiting at its old place (its agent
is gone), with a `conversation.updated` event (`queue_removed`, `agent_removed`) and one warning
line per move. Every move is a compare-and-set: several nodes starting together move each once.
"""

from __future__ import annotations

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import Directory
from gateway.errors import VersionConflict
from gateway.model import Conversation, Event, State
from gateway.routing import Router
from gateway.store.base import Store

log = structlog.get_logger("gateway.reconcile")

OPEN = (State.WAITING, State.ACTIVE, State.PENDING)
SCAN = 100_000
"""Most conversations of one state read in one pass (a startup, not a request)."""


async def reconcile(
    store: Store, clock: Clock, directory: Directory, router: Router
) -> list[Event]:
    """Move every open conversation whose queue or agent is gone; return the events."""
    counts = await store.count_by_state()
    gone_queues = sorted(
        {queue for (state, queue), n in counts.items() if n and state in OPEN}
        - set(directory.queues)
    )
    suspects: dict[str, Conversation] = {}
    if gone_queues:
        for state in OPEN:
            for conversation in await store.list_conversations(
                state, queues=gone_queues, limit=SCAN
            ):
                suspects[conversation.id] = conversation
    # Active ones are indexed by agent (loads); pending ones are few enough to read through.
    loads = await store.agent_loads()
    for agent in sorted(a for a, n in loads.items() if n and a not in directory.agents):
        for conversation in await store.list_conversations(State.ACTIVE, agent=agent, limit=SCAN):
            suspects[conversation.id] = conversation
    for conversation in await store.list_conversations(State.PENDING, limit=SCAN):
        if conversation.agent is not None and conversation.agent not in directory.agents:
            suspects[conversation.id] = conversation
    events: list[Event] = []
    for conversation in suspects.values():
        events.extend(await _move(store, clock, directory, router, conversation))
    return events


async def _move(
    store: Store, clock: Clock, directory: Directory, router: Router, conversation: Conversation
) -> list[Event]:
    for _ in range(5):
        queue = None
        if conversation.queue not in directory.queues:
            queue = router.route(
                conversation.channel,
                conversation.channel_type,
                conversation.preview,
                conversation.contact.address,
            ).queue
        agent_gone = conversation.agent is not None and conversation.agent not in directory.agents
        transition = lifecycle.orphaned(
            conversation,
            clock.now(),
            directory.policy(conversation.channel),
            queue=queue,
            agent_gone=agent_gone,
        )
        if not transition.changed:
            return []
        try:
            stored, events = await store.update_conversation(transition, conversation.version)
        except VersionConflict:  # another node moved it, or its customer wrote: look again
            fresh = await store.get_conversation(conversation.id)
            if fresh is None:
                return []
            conversation = fresh
            continue
        log.warning(
            "reconcile.moved",
            conversation_id=stored.id,
            state=str(stored.state),
            queue=stored.queue,
            from_queue=conversation.queue,
            from_agent=conversation.agent,
            reason="agent_removed" if agent_gone else "queue_removed",
        )
        return list(events)
    log.warning("reconcile.conversation_busy", conversation_id=conversation.id)
    return []
