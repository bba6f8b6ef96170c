"""The one path every adapter's traffic takes: dedup, durable append, lifecycle, routing, events.

`Ingestor.message` returns only after the store committed the message (the adapter then
acknowledges the provider). Routing is decided before the store step because it is pure and
needs nothing stored; the lifecycle runs inside the store's atomic step so the open-conversation
lookup and the write cannot race. Work after the commit (automatic assignment) is best-effort:
it is retried from stored state by the scheduler's sweep, so a failure there loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime

import structlog

from gateway import lifecycle
from gateway.clock import Clock
from gateway.errors import StoreUnavailable, VersionConflict
from gateway.ids import new_id
from gateway.lifecycle import ChannelPolicy, Transition
from gateway.model import Conversation, DeliveryStatus, Direction, InboundMessage, Message
from gateway.store.base import IngestPlan, IngestResult, StatusResult, Store

log = structlog.get_logger("gateway.ingest")

RouteFn = Callable[[InboundMessage], str]
PolicyFn = Callable[[str], ChannelPolicy]
AfterCommit = Callable[[str], Awaitable[None]]
Observer = Callable[[str, str, float], None]
StatusObserver = Callable[[str, str, str], None]
"""Told (channel, reported status, outcome) of each delivery report (`Ingestor.status`)."""

CAS_ATTEMPTS = 5


def to_message(
    inbound: InboundMessage,
    message_id: str,
    conversation: Conversation,
    received_at: datetime | None = None,
) -> Message:
    """Build the stored form of a customer message for the conversation it joins.

    `received_at` defaults to the conversation's last change; ingest passes its own clock
    reading (a message that does not change the conversation still arrived now).
    """
    return Message(
        id=message_id,
        conversation_id=conversation.id,
        channel=inbound.channel,
        channel_type=inbound.channel_type,
        provider=inbound.provider,
        direction=Direction.IN,
        kind=inbound.kind,
        text=inbound.text,
        sent_at=inbound.sent_at,
        received_at=received_at or conversation.updated_at,
        provider_message_id=inbound.provider_message_id,
        attachments=inbound.attachments,
        reply_to=inbound.reply_to,
        updates=inbound.updates,
        subject=inbound.subject,
        contact=inbound.contact,
        client_id=inbound.extra.get("client_id"),
        raw=inbound.raw,
        extra=inbound.extra,
    )


class _WindowLapsed(Exception):
    """Raised by the ingest plan: the contact's open conversation is past its reply window
    (its timer has not fired yet); expire it first, then store the message anew."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(conversation_id)
        self.conversation_id = conversation_id


async def expire_lapsed_window(store: Store, conversation_id: str, clock: Clock) -> bool:
    """Make a conversation whose reply window has lapsed inactive now, without waiting for its
    timer (which then finds nothing to do). Its window is over, so it is inactive already by
    the rules: a customer who writes now starts a new conversation, and an agent's action on it
    is refused as on any inactive one, whether or not the timer ran first (milliseconds, or
    the whole outage after a restart). Returns whether it changed it."""
    try:
        _, changed = await _update(
            store, conversation_id, lambda c: lifecycle.expire_window(c, clock.now())
        )
    except VersionConflict:  # busy: the caller decides again on what it reads next
        return False
    if changed:
        log.info("lifecycle.window_lapsed", conversation_id=conversation_id)
    return changed


async def _update(
    store: Store, conversation_id: str, decide: Callable[[Conversation], Transition]
) -> tuple[Conversation | None, bool]:
    """Apply `decide` to a conversation by compare-and-set, deciding again on a conflict:
    (the conversation as it is now, None if there is none; whether this changed it)."""
    for _ in range(CAS_ATTEMPTS):
        conversation = await store.get_conversation(conversation_id)
        if conversation is None:
            return None, False
        transition = decide(conversation)
        if not transition.changed:
            return conversation, False
        try:
            stored, _ = await store.update_conversation(transition, conversation.version)
        except VersionConflict:
            continue
        return stored, True
    raise VersionConflict(f"conversation {conversation_id} kept changing")


class Ingestor:
    """Implements the adapters' `Inbound` sink over the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        route: RouteFn,
        policy_for: PolicyFn,
        after_commit: AfterCommit | None = None,
        observe: Observer | None = None,
        observe_status: StatusObserver | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.route = route
        self.policy_for = policy_for
        self.after_commit = after_commit
        self.observe = observe
        self.observe_status = observe_status

    async def message(self, inbound: InboundMessage) -> IngestResult:
        """Store one customer message (exactly once per provider id) and update its conversation."""
        started = time.perf_counter()
        now = self.clock.now()
        policy = self.policy_for(inbound.channel)
        message_id = new_id("m")
        routed: list[str] = []

        def queue() -> str:
            """The routing rules' queue, worked out only for a message that opens a
            conversation: most join an open one, and routing costs rules x text length."""
            if not routed:
                routed.append(self.route(inbound))
            return routed[0]

        def plan(open_conv: Conversation | None, thread_conv: Conversation | None) -> IngestPlan:
            if open_conv is not None and inbound.wakes_conversation:
                expires = open_conv.window_expires_at
                if expires is not None and expires <= min(inbound.sent_at, now):
                    raise _WindowLapsed(open_conv.id)
            transition = self._decide(inbound, open_conv, thread_conv, queue, now, policy)
            # Built once with its final fields: this runs in the store's single writer thread
            # for every message, where a `dataclasses.replace` copy costs about 13 µs.
            message = to_message(inbound, message_id, transition.conversation, received_at=now)
            return IngestPlan(transition, message)

        for _ in range(CAS_ATTEMPTS):
            try:
                result = await self.store.ingest(inbound, plan)
                break
            except _WindowLapsed as lapsed:
                await expire_lapsed_window(self.store, lapsed.conversation_id, self.clock)
        else:
            raise VersionConflict("the contact's conversation kept changing; try again")
        outcome = "duplicate" if result.duplicate else "stored"
        # Every stored message is already in the event log; a log line per message at info
        # would cost a write per webhook on the hot path, so it is debug. Duplicates are rare
        # and worth seeing (a provider retrying means something was slow): info.
        (log.info if result.duplicate else log.debug)(
            "ingest.duplicate_dropped" if result.duplicate else "ingest.stored",
            channel=inbound.channel,
            conversation_id=result.conversation.id,
            message_id=result.message.id,
            kind=inbound.kind,
        )
        if self.observe is not None:
            self.observe(inbound.channel, outcome, time.perf_counter() - started)
        if result.distribute and self.after_commit is not None:
            try:
                await self.after_commit(result.distribute)
            except StoreUnavailable as exc:  # the same, without a traceback for an outage
                log.warning("ingest.distribute_failed", queue=result.distribute, error=str(exc))
            except Exception:  # retried by the scheduler's sweep from stored state
                log.exception("ingest.distribute_failed", queue=result.distribute)
        return result

    @staticmethod
    def _decide(
        inbound: InboundMessage,
        open_conv: Conversation | None,
        thread_conv: Conversation | None,
        queue: Callable[[], str],
        now: datetime,
        policy: ChannelPolicy,
    ) -> Transition:
        """The lifecycle step for this message; a conversation id is made only when a new
        conversation starts (most messages join an open one)."""
        if not inbound.wakes_conversation:
            target = open_conv or thread_conv
            if target is not None:
                return Transition(target, (), changed=False)
            return lifecycle.archived_conversation(new_id("c"), inbound, queue(), now)
        if open_conv is not None:
            return lifecycle.customer_message(open_conv, inbound, now, policy)
        previous = thread_conv.id if thread_conv is not None else None
        return lifecycle.open_conversation(
            new_id("c"), inbound, queue(), now, policy, previous_conversation_id=previous
        )

    async def status(self, status: DeliveryStatus) -> StatusResult:
        """Apply a delivery report; a 'window closed' error also closes the window."""
        result, early = await self._apply_status(status)
        if self.observe_status is not None:
            if result.message is None:
                outcome = "unknown_message"
            elif result.message.direction == Direction.IN:
                outcome = "inbound_message"
            elif result.moved:
                outcome = "applied"
            else:
                outcome = "early" if early else "stale"
            self.observe_status(status.channel, str(status.status), outcome)
        return result

    async def _apply_status(self, status: DeliveryStatus) -> tuple[StatusResult, bool]:
        """The report applied, and whether it came before its send was recorded: the store
        then kept it, and applied it as it recorded the send (a web chat push reports its
        delivery as soon as it is written, often before), so it is not stale though this
        answer did not move the message."""
        result = await self.store.apply_status(status)
        early = result.message is None
        if early and status.message_id:
            correlated, second_send = await self._correlate(status)
            result = correlated or result
            early = not second_send  # a report of a second send is stale, not early
        if result.message is None:
            log.warning(
                "ingest.status_unknown_message",
                channel=status.channel,
                provider_message_id=status.provider_message_id,
                status=str(status.status),
            )
            return result, early
        if result.message.direction == Direction.IN:
            log.warning(
                "ingest.status_for_inbound_message",
                channel=status.channel,
                message_id=result.message.id,
                status=str(status.status),
            )
            return result, early
        if not result.moved and not early:
            log.info(
                "ingest.status_stale",
                channel=status.channel,
                message_id=result.message.id,
                status=str(status.status),
            )
        if status.closes_window:
            await close_window(self.store, result.message, self.clock)
        return result, early

    async def _correlate(self, status: DeliveryStatus) -> tuple[StatusResult | None, bool]:
        """A report for a send whose answer was never recorded: the gateway died while the
        provider was answering, or the answer came too late. The report names our message
        (`DeliveryStatus.message_id`), so record its provider id now: that applies this
        report, kept as early by `apply_status`, and any kept before it; and the message is
        no longer `queued`, so its redelivery does not send it a second time. Also says
        whether the report is of a second send (the message went out under another id)."""
        assert status.message_id is not None
        message = await self.store.get_message(status.message_id)
        if message is None or message.channel != status.channel:
            return None, False
        if message.direction != Direction.OUT:
            return None, False
        if message.provider_message_id == status.provider_message_id:
            # Recorded since this report was first tried (another report of the same message
            # correlated it meanwhile, or its send's answer came): it applies now.
            return await self.store.apply_status(status), False
        if message.provider_message_id is not None:
            # It went out under another id: a try that timed out reached the provider after
            # all, and the retry sent it again. The customer may have it twice: say so.
            log.warning(
                "ingest.status_for_second_send",
                channel=status.channel,
                message_id=message.id,
                provider_message_id=status.provider_message_id,
                recorded_provider_message_id=message.provider_message_id,
                status=str(status.status),
            )
            return StatusResult(message, False), True
        recorded = await self.store.record_send(
            message.id, provider_message_id=status.provider_message_id, status=None
        )
        log.info(
            "ingest.status_correlated",
            channel=status.channel,
            message_id=message.id,
            provider_message_id=status.provider_message_id,
        )
        return recorded, False


async def close_window(store: Store, refused: Message, clock: Clock) -> Conversation | None:
    """Apply the provider's "outside the window" verdict on the `refused` message to its
    conversation (CAS with retry), unless the customer wrote since it was sent."""
    conversation_id = refused.conversation_id
    conversation, changed = await _update(
        store,
        conversation_id,
        lambda c: lifecycle.provider_window_closed(c, clock.now(), refused.received_at),
    )
    if changed:
        log.info("conversation.window_closed_by_provider", conversation_id=conversation_id)
    return conversation
