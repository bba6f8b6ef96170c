"""Delivery reports and inbound messages, on every store (the `store` fixture is parametrized)."""

from __future__ import annotations

from datetime import timedelta

from gateway import lifecycle
from gateway.clock import ManualClock
from gateway.model import DeliveryState, DeliveryStatus, State
from gateway.store.base import Store
from tests.conftest import inbound
from tests.store.test_contract import make_ingestor, outbound


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


async def test_only_a_failure_the_gateway_could_not_verify_is_lifted_by_a_later_report(
    store: Store, clock: ManualClock
) -> None:
    """`failed` is final when the provider said so; when the gateway gave up without learning
    the outcome (every try timed out: `channel_unavailable`), the provider's later word that
    the message went out is the truth, and no error is left on it."""
    conv = (await make_ingestor(store, clock).message(inbound())).conversation
    ids: dict[str, str] = {}
    for key in ("gave_up", "refused"):
        msg = outbound(conv.id, clock)
        conv = (
            await store.add_outbound(
                lifecycle.agent_message(conv, msg, clock.now()), conv.version, msg, None
            )
        ).conversation
        ids[key] = msg.id
    gave_up = DeliveryStatus(
        "wa-main", ids["gave_up"], DeliveryState.FAILED, clock.now(), "channel_unavailable", "t/o"
    )
    assert (await store.record_send(ids["gave_up"], provider_message_id=None, status=gave_up)).moved
    refused = DeliveryStatus("wa-main", "SM-R", DeliveryState.FAILED, clock.now(), "131026", "no")
    assert (
        await store.record_send(ids["refused"], provider_message_id="SM-R", status=refused)
    ).moved

    # The provider had taken the first one after all: its report names it (see _correlate).
    await store.record_send(ids["gave_up"], provider_message_id="SM-G", status=None)
    lifted = await store.apply_status(
        DeliveryStatus("wa-main", "SM-G", DeliveryState.DELIVERED, clock.now())
    )
    assert lifted.moved and lifted.message is not None
    assert (lifted.message.status, lifted.message.error_code) == (DeliveryState.DELIVERED, None)
    assert lifted.message.error_message is None
    # Once lifted, the usual order holds: a late `sent` or `failed` changes nothing.
    for late in (DeliveryState.SENT, DeliveryState.FAILED):
        stale = await store.apply_status(DeliveryStatus("wa-main", "SM-G", late, clock.now()))
        assert not stale.moved
    # A provider's own refusal stays final, whatever comes after it.
    for late in (DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.READ):
        stale = await store.apply_status(DeliveryStatus("wa-main", "SM-R", late, clock.now()))
        assert not stale.moved
    refused_now = await store.get_message(ids["refused"])
    assert refused_now is not None and refused_now.status == DeliveryState.FAILED
    assert refused_now.error_code == "131026"
    statuses = [
        (e.message.id, e.message.status)
        for e in await store.read_events(None)
        if e.type == "message.status" and e.message is not None
    ]
    assert statuses == [
        (ids["gave_up"], DeliveryState.FAILED),
        (ids["refused"], DeliveryState.FAILED),
        (ids["gave_up"], DeliveryState.DELIVERED),
    ]


async def test_a_message_after_the_window_lapsed_starts_a_new_conversation_before_the_timer(
    store: Store, clock: ManualClock
) -> None:
    """The window timer may not have run yet (milliseconds, or a whole outage before a
    restart): the conversation is over by the rules all the same. The customer's new message
    starts a new conversation, instead of joining the old one and reopening its window; the old
    one goes inactive first. A message the customer sent before the end (delivered late) still
    joins it."""
    ingest = make_ingestor(store, clock)
    first = (await ingest.message(inbound("Hola", pid="wamid.1", sent_at=clock.now()))).conversation
    assert first.window_expires_at is not None
    clock.set(first.window_expires_at + timedelta(milliseconds=2))  # the timer did not run
    late = await ingest.message(
        inbound(
            "escrito a tiempo",
            pid="wamid.2",
            sent_at=first.window_expires_at - timedelta(seconds=1),
        )
    )
    assert late.conversation.id == first.id  # written inside the window: it joins
    lapsed_at = late.conversation.window_expires_at
    assert lapsed_at is not None
    clock.set(lapsed_at + timedelta(milliseconds=2))
    result = await ingest.message(inbound("¿sigue ahí?", pid="wamid.3", sent_at=clock.now()))
    assert result.conversation.id != first.id
    assert result.conversation.state == State.WAITING
    assert result.message.conversation_id == result.conversation.id
    old = await store.get_conversation(first.id)
    assert old is not None and (old.state, old.inactive_reason) == (
        State.INACTIVE,
        "window_expired",
    )
    types = [
        (e.type, e.conversation.id if e.conversation else None)
        for e in await store.read_events(None)
    ]
    assert types.index(("conversation.updated", first.id)) < types.index(
        ("conversation.created", result.conversation.id)
    )
    # The timer, when it runs, finds nothing left to do.
    assert (await ingest.message(inbound("¿sigue ahí?", pid="wamid.3"))).duplicate


async def test_a_report_that_correlates_after_another_recorded_the_send_still_applies(
    store: Store, clock: ManualClock
) -> None:
    """Two reports of one agent reply (a web chat's `delivered` then `read`, from two
    sockets or nodes) before its send's answer was recorded: each names our message. One
    was looked up by provider id before the other recorded it (found nothing), and
    correlated after: it used to be dropped as "unknown message" (widget audit: 61 such
    warnings), losing the `read`. Its correlation now finds the id recorded and applies it."""
    ingestor = make_ingestor(store, clock)
    conversation = (await ingestor.message(inbound())).conversation
    reply = outbound(conversation.id, clock)
    await store.add_outbound(
        lifecycle.agent_message(conversation, reply, clock.now()),
        conversation.version,
        reply,
        None,
    )

    def report(state: DeliveryState) -> DeliveryStatus:
        return DeliveryStatus("wa-main", reply.id, state, clock.now(), message_id=reply.id)

    await ingestor.status(report(DeliveryState.DELIVERED))  # correlates: records the id
    # `read`'s own lookup ran before that and found nothing; it correlates now.
    correlated, second_send = await ingestor._correlate(report(DeliveryState.READ))
    assert correlated is not None and correlated.moved and not second_send
    stored = await store.get_message(reply.id)
    assert stored is not None and stored.status == DeliveryState.READ
