"""Hypothesis drives random traffic and agent actions through ingest and the real SQLite store,
checking the invariants after every step against what the store itself reports."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.actions import Actions
from gateway.clock import ManualClock
from gateway.directory import AgentInfo, Directory, QueueInfo
from gateway.errors import GatewayError
from gateway.ingest import Ingestor
from gateway.lifecycle import ALLOWED_EDGES, ChannelPolicy
from gateway.model import Contact, InboundMessage, State
from gateway.store.sqlite import SqliteStore
from gateway.timers import DeadlineHandler, Scheduler

POLICY = ChannelPolicy(reply_window=timedelta(hours=24), no_agent_timeout=timedelta(minutes=5))
DIRECTORY = Directory(
    channels={"wa": POLICY, "web": POLICY},
    queues={"q": QueueInfo("q", requeue_after=timedelta(minutes=30))},
    agents={
        "maria": AgentInfo("maria", frozenset({"q"}), 2),
        "jose": AgentInfo("jose", frozenset({"q"}), 1),
    },
)
CONTACTS = ["+1", "+2", "+3", "+4"]
CHANNELS = ["wa", "web"]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp())
        self.clock = ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
        self.store = SqliteStore(self.tmp / "p.db")
        self.run(self.store.open())
        self.ingest = Ingestor(self.store, self.clock, lambda m: "q", DIRECTORY.policy)
        self.actions = Actions(self.store, self.clock, DIRECTORY)
        self.scheduler = Scheduler(
            self.store, self.clock, DeadlineHandler(self.store, self.clock, DIRECTORY)
        )
        self.states: dict[str, State] = {}
        self.counter = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def record(self) -> None:
        """Check every stored state change walked an allowed edge, then remember states."""
        for state in State:
            for conv in self.run(self.store.list_conversations(state, limit=1000)):
                before = self.states.get(conv.id)
                if before is not None and before != conv.state:
                    assert (before, conv.state) in ALLOWED_EDGES, (before, conv.state)
                self.states[conv.id] = conv.state

    @rule(
        channel=st.sampled_from(CHANNELS),
        contact=st.sampled_from(CONTACTS),
        duplicate=st.booleans(),
    )
    def customer_writes(self, channel: str, contact: str, duplicate: bool) -> None:
        if not duplicate:
            self.counter += 1
        message = InboundMessage(
            channel=channel,
            channel_type="test",
            provider="test",
            provider_message_id=f"p{self.counter}",
            contact=Contact(contact),
            sent_at=self.clock.now(),
            text="hi",
        )
        before = len(self.run(self.store.read_events(None, limit=100_000)))
        result = self.run(self.ingest.message(message))
        after = len(self.run(self.store.read_events(None, limit=100_000)))
        if result.duplicate:
            assert after == before  # a duplicate writes nothing
        self.record()

    @rule(
        agent=st.sampled_from(["maria", "jose"]),
        index=st.integers(0, 20),
        action=st.sampled_from(["accept", "set_pending", "resume", "close"]),
    )
    def agent_acts(self, agent: str, index: int, action: str) -> None:
        ids = sorted(self.states)
        if not ids:
            return
        conversation_id = ids[index % len(ids)]
        before = self.run(self.store.get_conversation(conversation_id))
        try:
            self.run(getattr(self.actions, action)(conversation_id, DIRECTORY.agents[agent]))
        except GatewayError:
            after = self.run(self.store.get_conversation(conversation_id))
            assert after == before  # a refused action changes nothing
        self.record()

    @rule(minutes=st.integers(1, 24 * 60))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))
        self.run(self.scheduler.run_once())
        self.record()

    @invariant()
    def one_open_conversation_per_contact_and_channel(self) -> None:
        seen: set[tuple[str, str]] = set()
        for state in (State.WAITING, State.ACTIVE, State.PENDING):
            for conv in self.run(self.store.list_conversations(state, limit=1000)):
                key = (conv.channel, conv.contact.address)
                assert key not in seen, key
                seen.add(key)

    @invariant()
    def waiting_is_queued_at_order(self) -> None:
        waiting = self.run(self.store.list_conversations(State.WAITING, limit=1000))
        keys = [(c.queued_at, c.id) for c in waiting]
        assert keys == sorted(keys)
        assert all(c.agent is None for c in waiting)

    @invariant()
    def max_active_holds(self) -> None:
        loads = self.run(self.store.agent_loads())
        for agent, load in loads.items():
            assert load <= DIRECTORY.agents[agent].max_active


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestStoreMachine = StoreMachine.TestCase
