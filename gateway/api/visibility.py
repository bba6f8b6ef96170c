"""Which events an agent may see: one rule for the live stream and the event log.

DESIGN.md section 1: an agent previews the conversations of their queues; one assigned to
them (a transfer to an agent of another queue) is theirs too.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.directory import AgentInfo
from gateway.model import Event


def visible_to(agent: AgentInfo) -> Callable[[Event], bool]:
    """Agents see events of conversations on their queues or assigned to them."""

    def accept(event: Event) -> bool:
        conversation = event.conversation
        if conversation is None:
            return False
        if conversation.queue in agent.queues or conversation.agent == agent.id:
            return True
        # The change that took it out of their sight: they must learn it is gone.
        before = event.moved_from
        return before is not None and (before.queue in agent.queues or before.agent == agent.id)

    return accept
