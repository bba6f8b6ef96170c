"""At startup: conversations the config no longer accounts for, moved where someone can act on
them, or (their channel gone) made inactive.

Removing a queue, an agent or a channel from config.yaml is an ordinary change, but the
conversations they held stay in the store:

- A conversation in a queue that no longer exists is in nobody's inbox, and agents get
  `not_on_queue` for every action on it. It goes where the routing rules now put it, whatever
  its state: open ones so someone serves them, inactive and closed ones so agents can still
  look the contact up (DESIGN section 1).
- One held by an agent who no longer exists, or who is no longer on its queue, can be neither
  answered nor taken over (`not_assignee`), and its holder no longer lists it. It waits again,
  at its old place in the queue.
- An open one on a channel that no longer exists (removed, or renamed) can never be answered:
  it becomes inactive (`channel_removed`), so it leaves the waiting queue and its agent's load,
  and stays listed for the record. Its customer's next message, on the channel as it is now
  named, starts a new conversation.
- An open one whose channel's `reply_window` changed gets its window measured again from the
  customer's last message: a window set too short (or too long) by mistake is corrected for
  the conversations it already governs, not only for new ones.

Each change has its `conversation.updated` event and one warning line. Every change is a
compare-and-set: several nodes starting together make each once. The config is read at start
only, so on a rolling change nodes still on the old config may route into a removed queue
until a node with the new one starts again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from datetime import datetime, timedelta

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.directory import Directory
from gateway.errors import VersionConflict
from gateway.lifecycle import Transition
from gateway.model import Conversation, Event, State
from gateway.routing import Router
from gateway.store.base import Store, list_position

log = structlog.get_logger("gateway.reconcile")

OPEN = (State.WAITING, State.ACTIVE, State.PENDING)
HISTORY = (State.INACTIVE, State.CLOSED)
PAGE = 1000
"""Conversations read per store call while looking for orphans."""
WINDOW_SLACK = timedelta(minutes=1)
"""A window this close to what the policy gives is left alone: one measured from a receipt time
(a provider clock running ahead) differs by seconds, and is not a changed setting."""


async def reconcile(
    store: Store, clock: Clock, directory: Directory, router: Router
) -> list[Event]:
    """Bring every conversation in line with the config; return the events of the changes."""
    counts = await store.count_by_state()
    gone_queues = sorted({queue for (_, queue), n in counts.items() if n} - set(directory.queues))
    suspects: dict[str, Conversation] = {}
    for state in OPEN:  # open ones are few next to the history: all of them are looked at
        async for conversation in _listed(store, state):
            if _decide(conversation, clock, directory, router)[0].changed:
                suspects[conversation.id] = conversation
    if gone_queues:
        for state in HISTORY:
            async for conversation in _listed(store, state, queues=gone_queues):
                suspects[conversation.id] = conversation
    events: list[Event] = []
    for conversation in suspects.values():
        events.extend(await _settle(store, clock, directory, router, conversation))
    return events


async def _listed(
    store: Store, state: State, queues: Collection[str] | None = None
) -> AsyncIterator[Conversation]:
    """Every conversation in `state` (on `queues`), page by page."""
    after = None
    while True:
        page = await store.list_conversations(state, queues=queues, limit=PAGE, after=after)
        for conversation in page:
            yield conversation
        if len(page) < PAGE:
            return
        after = list_position(page[-1])


def _policy_window(conversation: Conversation, directory: Directory) -> datetime | None:
    """Where the channel's reply window, as configured now, ends for this conversation:
    from the customer's last message on the provider's time, but never from after the
    conversation's last activity (a provider clock ahead, or a forged timestamp, must not
    stretch it: ingest caps the same way, at receipt)."""
    window = directory.policy(conversation.channel).reply_window
    last = conversation.last_customer_message_at
    if window is None or last is None:
        return None
    return min(last, conversation.last_message_at or last) + window


def _window_moved(conversation: Conversation, directory: Directory) -> bool:
    if conversation.last_customer_message_at is None:
        return False
    stored, wanted = conversation.window_expires_at, _policy_window(conversation, directory)
    if stored is None or wanted is None:
        return stored != wanted
    return abs(stored - wanted) > WINDOW_SLACK


def _decide(
    conversation: Conversation, clock: Clock, directory: Directory, router: Router
) -> tuple[Transition, str]:
    """The change that settles `conversation` under the config, and why (for the log)."""
    now = clock.now()
    if conversation.state in OPEN and conversation.channel not in directory.channels:
        return lifecycle.channel_removed(conversation, now), "channel_removed"
    queue = None
    if conversation.queue not in directory.queues:
        # Routed on the customer's words only: once an agent answered, the preview is theirs.
        text = conversation.preview if conversation.state == State.WAITING else None
        queue = router.route(
            conversation.channel, conversation.channel_type, text, conversation.contact.address
        ).queue
    holder = directory.agents.get(conversation.agent) if conversation.agent else None
    agent_gone = (
        conversation.state in OPEN
        and conversation.agent is not None
        and (holder is None or (queue or conversation.queue) not in holder.queues)
    )
    transition = lifecycle.orphaned(
        conversation,
        now,
        directory.policy(conversation.channel),
        queue=queue,
        agent_gone=agent_gone,
    )
    if not transition.changed and _window_moved(conversation, directory):
        wanted = _policy_window(conversation, directory)
        return lifecycle.reply_window_changed(conversation, now, wanted), "reply_window_changed"
    if not agent_gone:
        return transition, "queue_removed"
    return transition, "agent_removed" if holder is None else "agent_left_queue"


async def _settle(
    store: Store, clock: Clock, directory: Directory, router: Router, conversation: Conversation
) -> list[Event]:
    """Apply `_decide` until nothing is left to change (a queue and a window may both be)."""
    events: list[Event] = []
    for _ in range(5):
        transition, reason = _decide(conversation, clock, directory, router)
        if not transition.changed:
            return events
        try:
            stored, changed = await store.update_conversation(transition, conversation.version)
        except VersionConflict:  # another node moved it, or its customer wrote: look again
            fresh = await store.get_conversation(conversation.id)
            if fresh is None:
                return events
            conversation = fresh
            continue
        log.warning(
            "reconcile.moved",
            conversation_id=stored.id,
            state=str(stored.state),
            queue=stored.queue,
            channel=stored.channel,
            from_state=str(conversation.state),
            from_queue=conversation.queue,
            from_agent=conversation.agent,
            reason=reason,
        )
        events.extend(changed)
        conversation = stored
    log.warning("reconcile.conversation_busy", conversation_id=conversation.id)
    return events
