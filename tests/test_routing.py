"""Routing rules and automatic distribution: pure decisions, tested without a store or clock."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.routing import (
    MATCH_TIMEOUT,
    ROUTED_TEXT_CHARS,
    AgentCandidate,
    Router,
    choose_agent,
)


def router(
    routing: list[dict[str, Any]], queues: tuple[str, ...] = ("sales", "support", "vip")
) -> Router:
    config = GatewayConfig.model_validate(
        {
            "channels": [
                {"name": "wa-main", "type": "whatsapp"},
                {"name": "wa-br", "type": "whatsapp"},
                {"name": "site", "type": "webchat"},
                {"name": "mail", "type": "email"},
            ],
            "queues": [{"name": name} for name in queues],
            "routing": routing,
        }
    )
    return Router(config)


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------


def test_first_match_wins() -> None:
    r = router(
        [
            {"if": {"type": "whatsapp"}, "queue": "sales"},
            {"if": {"channel": "wa-main"}, "queue": "vip"},
        ]
    )

    match = r.route("wa-main", "whatsapp", "hi", "+5511999")

    assert (match.rule_index, match.queue) == (0, "sales")
    assert "routing[0]" in match.description


def test_channel_condition() -> None:
    r = router([{"if": {"channel": "wa-br"}, "queue": "vip"}, {"queue": "support"}])

    assert r.route("wa-br", "whatsapp", None, None).queue == "vip"
    assert r.route("wa-main", "whatsapp", None, None).queue == "support"


def test_type_condition() -> None:
    r = router([{"if": {"type": "email"}, "queue": "support"}, {"queue": "sales"}])

    assert r.route("mail", "email", "hello", "a@b.com").queue == "support"
    assert r.route("site", "webchat", "hello", "v-1").queue == "sales"


def test_text_is_searched_not_fullmatched() -> None:
    r = router([{"if": {"text": "precio|price"}, "queue": "sales"}, {"queue": "support"}])

    assert r.route("site", "webchat", "what is the price of this?", None).rule_index == 0
    assert r.route("site", "webchat", "What is the PRICE?", None).rule_index == 1
    assert r.route("site", "webchat", None, None).rule_index == 1


def test_only_the_start_of_a_long_text_is_searched() -> None:
    """Routing runs on the event loop for every message: 300 rules over a 1 MB email held the
    node for a second. The words that route a conversation come first."""
    r = router([{"if": {"text": "factura"}, "queue": "sales"}, {"queue": "support"}])
    near = "x" * (ROUTED_TEXT_CHARS - len("factura")) + "factura"
    assert r.route("mail", "email", near + "y" * 10**6, None).rule_index == 0
    assert r.route("mail", "email", "x" * ROUTED_TEXT_CHARS + "factura", None).rule_index == 1


def test_a_rule_that_backtracks_for_ever_times_out_as_no_match() -> None:
    """`^(a|aa)+$` on a run of a's and a '!' takes exponential time: one customer's message
    would hold the event loop, and every channel, for minutes."""
    r = router([{"if": {"text": "^(a|aa)+$"}, "queue": "vip"}, {"queue": "support"}])
    started = time.perf_counter()
    with capture_logs() as logs:
        match = r.route("site", "webchat", "a" * 60 + "!", None)
    assert match.queue == "support"
    assert time.perf_counter() - started < 10 * MATCH_TIMEOUT
    assert [line["rule"] for line in logs if line["event"] == "routing.rule_timed_out"] == [
        "routing[0]"
    ]
    assert r.route("site", "webchat", "aaaa", None).queue == "vip"  # it still matches


def test_text_case_insensitive_flag() -> None:
    r = router([{"if": {"text": "(?i)precio|price"}, "queue": "sales"}])

    assert r.route("site", "webchat", "Cual es el PRECIO?", None).rule_index == 0


def test_all_conditions_must_hold() -> None:
    r = router(
        [
            {"if": {"channel": "wa-main", "text": "(?i)price"}, "queue": "sales"},
            {"queue": "support"},
        ]
    )

    assert r.route("wa-main", "whatsapp", "price?", None).queue == "sales"
    assert r.route("wa-br", "whatsapp", "price?", None).queue == "support"
    assert r.route("wa-main", "whatsapp", "hello", None).queue == "support"


@pytest.mark.parametrize(
    ("glob", "sender", "matches"),
    [
        ("+55*", "+5511999990000", True),
        ("+55*", "+14155238886", False),
        ("*@bigcorp.com", "Ana@BigCorp.COM", True),
        ("*@BIGCORP.com", "ana@bigcorp.com", True),
        ("*@bigcorp.com", "ana@bigcorp.com.evil.io", False),
        ("+55*", None, False),
    ],
)
def test_from_glob(glob: str, sender: str | None, matches: bool) -> None:
    r = router([{"if": {"from": glob}, "queue": "vip"}, {"queue": "support"}])

    assert (r.route("wa-main", "whatsapp", "hi", sender).queue == "vip") is matches


def test_default_rule() -> None:
    r = router([{"if": {"type": "email"}, "queue": "support"}, {"queue": "vip"}])

    match = r.route("site", "webchat", "hi", None)

    assert (match.rule_index, match.queue) == (1, "vip")
    assert "always" in match.description


def test_no_match_falls_back_to_first_queue() -> None:
    r = router([{"if": {"type": "email"}, "queue": "support"}])

    match = r.route("site", "webchat", "hi", None)

    assert (match.rule_index, match.queue) == (None, "sales")
    assert "no rule matched" in match.description


def test_no_rules_at_all() -> None:
    assert router([], queues=("support",)).route("site", "webchat", "x", None).queue == "support"


def test_no_queue_at_all() -> None:
    with pytest.raises(ConfigError):
        Router(GatewayConfig()).route("site", "webchat", "x", None)
    with pytest.raises(ConfigError):
        Router(GatewayConfig()).queue_for("site", "webchat", "x", None)


@given(
    channel=st.sampled_from(["wa-main", "wa-br", "site", "mail"]),
    channel_type=st.sampled_from(["whatsapp", "webchat", "email"]),
    text=st.none() | st.sampled_from(["hola", "quiero comprar", "URGENTE", ""]),
    sender=st.none() | st.sampled_from(["+5511999990000", "+14155238886", "ana@bigcorp.com"]),
)
def test_queue_for_is_the_queue_route_explains(
    channel: str, channel_type: str, text: str | None, sender: str | None
) -> None:
    """Ingest asks `queue_for` (no explanation built); `gateway route` asks `route`."""
    r = router(
        [
            {"if": {"text": "(?i)urgente"}, "queue": "vip"},
            {"if": {"from": "+55*", "type": "whatsapp"}, "queue": "sales"},
            {"if": {"channel": "mail"}, "queue": "support"},
        ]
    )
    assert r.queue_for(channel, channel_type, text, sender) == (
        r.route(channel, channel_type, text, sender).queue
    )


# --------------------------------------------------------------------------------------------
# choose_agent
# --------------------------------------------------------------------------------------------


def agents(*counts: tuple[int, int]) -> list[AgentCandidate]:
    """Candidates a, b, c, ... in config order from (active_count, max_active) pairs."""
    return [
        AgentCandidate(id=chr(ord("a") + i), active_count=active, max_active=cap, order=i)
        for i, (active, cap) in enumerate(counts)
    ]


def test_least_busy_picks_fewest_active() -> None:
    assert choose_agent("least_busy", agents((2, 5), (0, 5), (1, 5)), None) == "b"


def test_least_busy_skips_agents_at_capacity() -> None:
    assert choose_agent("least_busy", agents((1, 1), (3, 5)), None) == "b"


def test_least_busy_breaks_ties_by_order_then_rotates() -> None:
    candidates = agents((1, 5), (1, 5), (1, 5), (0, 5))
    tied = agents((1, 5), (1, 5), (1, 5))

    assert choose_agent("least_busy", candidates, None) == "d"
    assert choose_agent("least_busy", tied, None) == "a"
    assert choose_agent("least_busy", tied, "a") == "b"
    assert choose_agent("least_busy", tied, "b") == "c"
    assert choose_agent("least_busy", tied, "c") == "a"


def test_round_robin_takes_next_after_last_and_wraps() -> None:
    candidates = agents((4, 5), (0, 5), (2, 5))

    assert choose_agent("round_robin", candidates, None) == "a"
    assert choose_agent("round_robin", candidates, "a") == "b"
    assert choose_agent("round_robin", candidates, "b") == "c"
    assert choose_agent("round_robin", candidates, "c") == "a"


def test_round_robin_skips_full_agents() -> None:
    candidates = agents((0, 5), (5, 5), (1, 5))

    assert choose_agent("round_robin", candidates, "a") == "c"
    assert choose_agent("round_robin", agents((0, 5), (5, 5), (5, 5)), "a") == "a"


def test_round_robin_after_an_agent_who_left() -> None:
    assert choose_agent("round_robin", agents((0, 5), (0, 5)), "gone") == "a"


def test_order_not_list_position_defines_rotation() -> None:
    candidates = [
        AgentCandidate("late", 0, 5, order=7),
        AgentCandidate("early", 0, 5, order=2),
    ]

    assert choose_agent("round_robin", candidates, None) == "early"
    assert choose_agent("round_robin", candidates, "early") == "late"


@pytest.mark.parametrize("strategy", ["least_busy", "round_robin"])
def test_nobody_eligible(strategy: str) -> None:
    assert choose_agent(strategy, agents((5, 5), (1, 1)), None) is None
    assert choose_agent(strategy, [], "a") is None


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="fastest"):
        choose_agent("fastest", agents((0, 5)), None)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

candidate_lists = st.lists(st.tuples(st.integers(0, 6), st.integers(1, 5)), max_size=8).map(
    lambda counts: agents(*counts)
)


@given(
    candidates=candidate_lists,
    strategy=st.sampled_from(["least_busy", "round_robin"]),
    last=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "zz"])),
)
def test_choice_respects_capacity(
    candidates: list[AgentCandidate], strategy: str, last: str | None
) -> None:
    eligible = {c.id: c for c in candidates if c.active_count < c.max_active}

    chosen = choose_agent(strategy, candidates, last)

    if not eligible:
        assert chosen is None
        return
    assert chosen in eligible
    if strategy == "least_busy":
        assert eligible[chosen].active_count == min(c.active_count for c in eligible.values())


@given(size=st.integers(1, 8), strategy=st.sampled_from(["least_busy", "round_robin"]))
def test_equal_agents_each_get_one_per_cycle(size: int, strategy: str) -> None:
    candidates = agents(*[(0, 5)] * size)
    last: str | None = None
    chosen = []
    for _ in range(size):
        last = choose_agent(strategy, candidates, last)
        assert last is not None
        chosen.append(last)

    assert sorted(chosen) == sorted(c.id for c in candidates)


def test_round_robin_continues_after_the_place_of_an_agent_who_went_offline() -> None:
    """Rotation a, b, c: b had the last turn and went offline; c is next, not a."""
    online = [AgentCandidate("a", 0, 5, order=0), AgentCandidate("c", 0, 5, order=2)]

    assert choose_agent("round_robin", online, "b", rotation=["a", "b", "c"]) == "c"
    assert choose_agent("round_robin", online, "c", rotation=["a", "b", "c"]) == "a"
    assert choose_agent("least_busy", online, "b", rotation=["a", "b", "c"]) == "c"
    # someone no longer on the queue at all: from the top
    assert choose_agent("round_robin", online, "gone", rotation=["a", "b", "c"]) == "a"
