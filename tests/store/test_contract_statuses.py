"""Delivery reports and inbound messages, on every store (the `store` fixture is parametrized)."""

from __future__ import annotations

from gateway.clock import ManualClock
from gateway.model import DeliveryState, DeliveryStatus, State
from gateway.store.base import Store
from tests.conftest import inbound
from tests.store.test_contract import make_ingestor


async def test_a_status_never_changes_an_inbound_message(store: Store, clock: ManualClock) -> None:
    """Only outbound messages have a delivery state: a report that names a customer message's
    provider id (an id collision, a confused provider) changes nothing and writes no event,
    and a "window closed" error in it does not close the window."""
    ingestor = make_ingestor(store, clock)
    received = await ingestor.message(inbound(pid="wamid.same"))
    events_before = await store.read_events(None)
    for state, code in (
        (DeliveryState.DELIVERED, None),
        (DeliveryState.READ, None),
        (DeliveryState.FAILED, "131047"),
    ):
        report = DeliveryStatus(
            "wa-main",
            "wamid.same",
            state,
            clock.now(),
            error_code=code,
            closes_window=code is not None,
        )
        result = await ingestor.status(report)
        assert result.message is not None and result.message.id == received.message.id
        assert not result.moved
    stored = await store.get_message(received.message.id)
    assert stored is not None and stored.status is None and stored.error_code is None
    assert await store.read_events(None) == events_before
    conversation = await store.get_conversation(received.conversation.id)
    assert conversation is not None and conversation.state == State.WAITING
    assert conversation.window_expires_at == received.conversation.window_expires_at
