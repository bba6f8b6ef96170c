"""Where a new conversation goes, and which agent gets it: pure functions over the config.

Kept free of I/O and of the store so `gateway route` can dry-run exactly what the running
gateway would do, and so distribution can be tested (and property-tested) without a clock or a
database. The caller supplies the live facts (each agent's active count, who was assigned last).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import regex
import structlog

from gateway.config import GatewayConfig, RouteConfig
from gateway.errors import ConfigError

log = structlog.get_logger("gateway.routing")

ROUTED_TEXT_CHARS = 4096
"""How much of a message's text the `text` rules search. Routing runs on the event loop for
every message, and its cost is rules times text length: 300 rules over a 1 MB email took a
second, during which the node served nobody. The words that route a conversation come early."""
MATCH_TIMEOUT = 0.05
"""Seconds one rule's search may take before it counts as not matching. A pattern that
backtracks catastrophically on some input (`^(a|aa)+$` on a run of a's) would otherwise hold
the event loop for minutes on one customer's message."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The routing decision: the rule that matched (None for the fallback) and its queue."""

    rule_index: int | None
    queue: str
    description: str


@dataclass(frozen=True, slots=True)
class _Rule:
    """A routing rule with its regex compiled and its glob case-folded, ready to match."""

    index: int
    queue: str
    channel: str | None
    channel_type: str | None
    text: regex.Pattern[str] | None
    sender_glob: str | None
    description: str

    @classmethod
    def build(cls, index: int, rule: RouteConfig) -> _Rule:
        condition = rule.if_
        if condition is None:
            return cls(index, rule.queue, None, None, None, None, rule.describe())
        return cls(
            index=index,
            queue=rule.queue,
            channel=condition.channel,
            channel_type=condition.type,
            text=regex.compile(condition.text) if condition.text is not None else None,
            sender_glob=condition.from_.casefold() if condition.from_ is not None else None,
            description=rule.describe(),
        )

    def matches(
        self, channel: str, channel_type: str, text: str | None, sender: str | None
    ) -> bool:
        """All conditions must hold; a text or sender condition never matches a missing value."""
        if self.channel is not None and channel != self.channel:
            return False
        if self.channel_type is not None and channel_type != self.channel_type:
            return False
        if self.text is not None and (text is None or not self._searched(text)):
            return False
        return self.sender_glob is None or (
            sender is not None and fnmatch.fnmatchcase(sender.casefold(), self.sender_glob)
        )

    def _searched(self, text: str) -> bool:
        assert self.text is not None
        try:
            return self.text.search(text, timeout=MATCH_TIMEOUT) is not None
        except TimeoutError:
            log.warning(
                "routing.rule_timed_out",
                rule=f"routing[{self.index}]",
                seconds=MATCH_TIMEOUT,
                hint="the pattern backtracks on this text: simplify it",
            )
            return False


class Router:
    """Applies the `routing` rules of a config: first match wins, else the first queue."""

    def __init__(self, config: GatewayConfig) -> None:
        self._rules = [_Rule.build(index, rule) for index, rule in enumerate(config.routing)]
        self._fallback = config.queues[0].name if config.queues else None

    def route(
        self, channel: str, channel_type: str, text: str | None, sender: str | None
    ) -> RouteMatch:
        """Choose the queue for a new conversation from its channel and first message.

        `sender` is the contact's address (E.164 phone, email, visitor id). Raises
        `ConfigError` only when the config has no queue at all.
        """
        rule = self._match(channel, channel_type, text, sender)
        if rule is not None:
            description = f"routing[{rule.index}] matched: {rule.description}"
            return RouteMatch(rule.index, rule.queue, description)
        fallback = self._fallback_queue()
        description = f"no rule matched; the first queue '{fallback}' is the fallback"
        return RouteMatch(None, fallback, description)

    def queue_for(
        self, channel: str, channel_type: str, text: str | None, sender: str | None
    ) -> str:
        """`route(...).queue` without building the explanation (ingest needs only the queue)."""
        rule = self._match(channel, channel_type, text, sender)
        return rule.queue if rule is not None else self._fallback_queue()

    def _match(
        self, channel: str, channel_type: str, text: str | None, sender: str | None
    ) -> _Rule | None:
        if text is not None and len(text) > ROUTED_TEXT_CHARS:
            text = text[:ROUTED_TEXT_CHARS]
        for rule in self._rules:
            if rule.matches(channel, channel_type, text, sender):
                return rule
        return None

    def _fallback_queue(self) -> str:
        if self._fallback is None:
            raise ConfigError("no queue is configured, so there is nowhere to route to")
        return self._fallback


@dataclass(frozen=True, slots=True)
class AgentCandidate:
    """An online agent of the queue, as automatic distribution sees them.

    `order` is the agent's position in config.yaml: it breaks ties and defines the rotation.
    """

    id: str
    active_count: int
    max_active: int
    order: int


STRATEGIES = ("least_busy", "round_robin")


def choose_agent(
    strategy: str,
    candidates: Sequence[AgentCandidate],
    last_assigned: str | None,
    rotation: Sequence[str] = (),
) -> str | None:
    """Pick the agent to assign the next conversation to, or None if everyone is at capacity.

    Only agents below `max_active` are eligible. `round_robin` takes the next eligible agent
    after `last_assigned` in config order, wrapping around. `least_busy` takes the agent with
    the fewest active conversations; among equals it rotates the same way, so a tie does not
    always favor the agent listed first. `rotation` is every agent of the queue in config order
    (candidates' `order` is their place in it): when `last_assigned` is no candidate any more
    (they went offline), the turn still passes to whoever comes after their place, not back to
    the top, which would hand the first agents listed more than their share. Without
    `rotation`, or with no `last_assigned`, the rotation starts from the top.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown distribution strategy {strategy!r} (known: {STRATEGIES})")
    eligible = sorted(
        (c for c in candidates if c.active_count < c.max_active), key=lambda c: (c.order, c.id)
    )
    if strategy == "least_busy" and eligible:
        fewest = min(c.active_count for c in eligible)
        eligible = [c for c in eligible if c.active_count == fewest]
    if last_assigned is not None and last_assigned in rotation:
        after: int | None = list(rotation).index(last_assigned)
    else:
        after = _order_of(candidates, last_assigned)
    return _next_after(eligible, after)


def _order_of(candidates: Sequence[AgentCandidate], agent_id: str | None) -> int | None:
    return next((c.order for c in candidates if c.id == agent_id), None)


def _next_after(ordered: Sequence[AgentCandidate], after: int | None) -> str | None:
    """The first candidate placed after `after` in config order, wrapping to the first."""
    if not ordered:
        return None
    if after is not None:
        for candidate in ordered:
            if candidate.order > after:
                return candidate.id
    return ordered[0].id
