"""Agent messages to customers: checked against the window, stored once, delivered with retry.

An agent's send is stored first (queued, under its Idempotency-Key, with a `deliver` deadline)
and answered 202; delivery runs after. Transient provider errors are retried with exponential
backoff by tenacity; the message ends `sent` with the provider id, or `failed` with the reason
after the last try. If the node dies before delivery finishes, the `deliver` deadline lets any
node's scheduler try again, so an accepted message is never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from gateway import lifecycle
from gateway.actions import is_open_for_agent
from gateway.channels import ChannelAdapter, SendResult
from gateway.clock import Clock
from gateway.directory import AgentInfo
from gateway.durations import retry_span
from gateway.errors import (
    ChannelError,
    InvalidInput,
    NotFound,
    PermanentChannelError,
    StoreUnavailable,
    TransientChannelError,
    TransitionError,
    VersionConflict,
)
from gateway.hub import EventHub, Overflow, Subscription
from gateway.ids import new_id
from gateway.ingest import close_window
from gateway.keylocks import KeyedLocks
from gateway.model import (
    Attachment,
    Conversation,
    DeliveryState,
    DeliveryStatus,
    Direction,
    InactiveReason,
    Message,
    State,
)
from gateway.store.base import DELIVER_KIND, Store, message_target

log = structlog.get_logger("gateway.outbound")

CAS_ATTEMPTS = 20
"""Tries to store a reply against a conversation others keep changing (the customer's messages,
replies through other nodes): each conflict re-reads it, so this only bounds a pathological
storm. With 5, a bot's hundreds of parallel replies plus the customer's messages exhausted
them now and then (a spurious 409)."""
NOT_ANSWERABLE_KINDS = frozenset({"bounce", "auto_reply"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for transient provider errors, and when another node may take a delivery over.

    `redeliver_after` must stay well above the longest retry sequence (attempts x maximum),
    or a slow but alive delivery would be started a second time by the scheduler.
    """

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    redeliver_after: timedelta = timedelta(minutes=10)
    send_timeout: float = 60.0
    """Seconds one `adapter.send` may take before it counts as a transient failure."""

    @property
    def longest(self) -> float:
        """Seconds a delivery can spend retrying at most: how long a reply waits, at most, for
        an earlier one that another node is still sending."""
        span = retry_span(
            self.attempts,
            timedelta(seconds=self.initial),
            timedelta(seconds=self.maximum),
            timedelta(seconds=self.send_timeout),
        )
        return span.total_seconds()


ORDER_CHECK = 10
"""How many messages before a reply are looked at for an earlier one still being sent."""
ORDER_POLL_FIRST = 0.02
ORDER_POLL = 0.5
"""Seconds between looks at an earlier reply another node is sending, when no event about the
conversation came meanwhile (a provider that takes a message as `queued` reports nothing): from
ORDER_POLL_FIRST, doubling up to this (a provider usually takes a message within 100 ms)."""

DRAIN_TIMEOUT = 10.0
"""Seconds a shutdown waits for deliveries in flight. What is still sending then is cut off and
stays `queued`: its redelivery deadline sends it again, from this node after a restart or from
another one. (Waiting for every retry could take minutes, past any orchestrator's patience.)"""


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """What an agent asked to send: free text, a template, attachments."""

    text: str | None = None
    template: dict[str, Any] | None = None
    attachments: tuple[Attachment, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.template is not None:
            return "template"
        if self.attachments and not self.text:
            return self.attachments[0].kind
        return "text"


def _may_reengage(conversation: Conversation, agent: AgentInfo) -> bool:
    """Tell whether the agent may still write to a conversation whose window lapsed.

    A lapsed window leaves the conversation `inactive`, and a template is the only way to
    reach that customer again (DESIGN section 2), so its last assignee (or, if nobody held
    it, an agent of its queue) may still send one; the conversation stays inactive and the
    customer's answer opens a new one. Free text is then refused as `window_closed` (with
    the template hint), not as "accept it first", which the agent could not do.
    """
    if conversation.state != State.INACTIVE:
        return False
    if conversation.inactive_reason != InactiveReason.WINDOW_EXPIRED:
        return False
    if conversation.agent is not None:
        return conversation.agent == agent.id
    return conversation.queue in agent.queues


def _authorize(conversation: Conversation, agent: AgentInfo) -> None:
    """Refuse an agent who may not send on this conversation now (before anything else)."""
    if is_open_for_agent(conversation, agent.id) or _may_reengage(conversation, agent):
        return
    visible = conversation.queue in agent.queues or conversation.agent == agent.id
    reengageable = (
        conversation.state == State.INACTIVE
        and conversation.inactive_reason == InactiveReason.WINDOW_EXPIRED
    )
    if visible and conversation.state == State.CLOSED:
        raise TransitionError(
            "invalid_transition",
            "the conversation is closed and takes no replies; a new message from the customer"
            " starts a new conversation",
        )
    if visible and conversation.state == State.INACTIVE and not reengageable:
        raise TransitionError(
            "invalid_transition",
            f"the conversation is inactive ({conversation.inactive_reason}) and takes no"
            " replies; a new message from the customer starts a new conversation",
        )
    if reengageable and visible:
        raise TransitionError(
            "not_assignee",
            "the conversation is inactive: only the agent who held it may send it a template",
        )
    raise TransitionError("not_assignee", "accept or resume the conversation before replying")


def _check_window(
    conversation: Conversation, request: OutboundRequest, now: datetime, templates: bool
) -> None:
    """Free text only inside the reply window; the hint names the way out only where there is
    one (a channel without templates cannot reach the customer until they write again)."""
    if request.template is None and not lifecycle.can_reply(conversation, now):
        if not templates:
            raise TransitionError(
                "window_closed",
                "the reply window is closed and this channel has no templates: nothing can be"
                " sent until the customer writes again",
            )
        raise TransitionError(
            "window_closed",
            "the customer-service window is closed: only an approved template can be sent"
            ' now, e.g. {"template": {"name": "...", "language": "es", "params": []}}',
        )


def _part_keys(idempotency_key: str | None, count: int) -> list[str | None]:
    """The Idempotency-Key each part is stored under: the key itself, or KEY#1, KEY#2, ..."""
    if idempotency_key is None or count == 1:
        return [idempotency_key] * count
    return [f"{idempotency_key}#{number}" for number in range(1, count + 1)]


def _key_reused() -> InvalidInput:
    return InvalidInput(
        "this Idempotency-Key was already used for a different request",
        code="idempotency_key_reused",
    )


def _sent_as(attachment: Attachment) -> tuple[str, str | None, str | None, str | None, str | None]:
    """What an agent's request says about an attachment (the store may add size, media id)."""
    a = attachment
    return (a.kind, a.url, a.mime_type, a.caption, a.filename)


def _require_same_request(previous: Message, request: OutboundRequest) -> None:
    """Refuse a request that reuses an Idempotency-Key for other text, template or files."""
    # Parts stored before they carried their place (extra "part") match any place.
    placed = "part" not in previous.extra or previous.extra["part"] == request.extra.get("part")
    same = (
        previous.text == request.text
        and previous.template == request.template
        and [_sent_as(a) for a in previous.attachments]
        == [_sent_as(a) for a in request.attachments]
        and placed
    )
    if not same:
        raise _key_reused()


def thread_headers(messages: list[Message]) -> dict[str, Any]:
    """Return the threading facts channels like email need: what we answer, what came before."""
    # A reply answers the customer, never a bounce or an auto-reply that landed in between.
    thread = [m for m in messages if m.provider_message_id and m.kind not in NOT_ANSWERABLE_KINDS]
    ids = [m.provider_message_id for m in thread]
    inbound = [m for m in thread if m.direction == Direction.IN]
    subject = next((m.subject for m in reversed(messages) if m.subject), None)
    return {
        "in_reply_to": inbound[-1].provider_message_id if inbound else None,
        "references": ids[-50:],
        "subject": subject,
    }


def _honouring_retry_after(
    backoff: Callable[[RetryCallState], float], maximum: float
) -> Callable[[RetryCallState], float]:
    """The exponential backoff, but never shorter than the provider's `Retry-After` (a 429
    saying "in 2 s" is not retried after 0.4 s, only to be refused again); capped at the
    policy's `maximum`, so the longest a delivery can spend retrying stays what
    `gateway check` prints."""

    def wait(state: RetryCallState) -> float:
        waited = backoff(state)
        error = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(error, "retry_after", None)
        if isinstance(hint, int | float) and hint > waited:
            return float(min(hint, maximum))
        return waited

    return wait


class Outbound:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        adapters: Mapping[str, ChannelAdapter],
        retry: RetryPolicy | None = None,
        observe: Callable[[str, str], None] | None = None,
        observe_retry: Callable[[str], None] | None = None,
        hub: EventHub | None = None,
        other_nodes: bool = True,
    ) -> None:
        self.store = store
        self.hub = hub
        """Where news of an earlier reply sent by another node comes from (see
        `_after_earlier`); without it, that wait polls the store."""
        self.other_nodes = other_nodes
        """Whether other nodes may be sending replies (not on SQLite, one process by design):
        without them, an earlier reply still `queued` and not in this node's hands was cut off
        by a restart and waits for its redelivery, and holds nothing back."""
        self.clock = clock
        self.adapters = adapters
        self.retry = retry or RetryPolicy()
        self.observe = observe
        """Told (channel, status) when a send ends: the status the provider took it in, or
        `failed`."""
        self.observe_retry = observe_retry
        """Told the channel of each attempt retried after a transient error."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()
        self._storing: KeyedLocks[str] = KeyedLocks()
        """Replies to one conversation are stored one at a time on this node: concurrent ones
        (a bot sending in parallel) would otherwise race each other's compare-and-set until
        some ran out of tries (409 conflict) though nothing really conflicted."""
        self._delivering: KeyedLocks[str] = KeyedLocks()
        """Deliveries to one conversation go one at a time, in the order they were started
        (the order the replies were stored): "Hi" retried after a 429 must not reach the
        customer after the "Your order is 123" typed after it."""
        self._looking_up = asyncio.Lock()
        """Redeliveries find their conversation one at a time, so they join its line in the
        order their deadlines fired (a store's reads may answer out of order)."""

    async def submit(
        self,
        conversation_id: str,
        agent: AgentInfo,
        request: OutboundRequest,
        idempotency_key: str | None,
    ) -> list[Message]:
        """Validate and store an agent's message (once per key), then start its delivery.

        A request with more attachments than the channel carries in one message (Meta's
        Cloud API: one) becomes several messages, sent in order: the first with the text and
        the attachments that fit, the others with the rest. Each is stored on its own, under
        `KEY#1`, `KEY#2`, ... when an Idempotency-Key was given, so retrying a request that was
        cut short stores and sends only the parts that are missing.
        """
        if not request.text and request.template is None and not request.attachments:
            raise InvalidInput("a message needs text, a template or attachments")
        if request.text and request.template is not None:
            raise InvalidInput('send either "text" or "template", not both')
        conversation = await self._read(conversation_id)
        adapter = self.adapters[conversation.channel]
        if request.template is not None and not getattr(adapter, "supports_templates", False):
            raise InvalidInput(
                f"the {adapter.channel_type} channel has no templates: send text instead"
            )
        check_outbound = getattr(adapter, "check_outbound", None)
        if check_outbound is not None:
            check_outbound(request)  # InvalidInput: what this provider can only refuse
        limit = getattr(adapter, "max_attachments", None)
        parts = self._parts(conversation_id, request, limit)
        keys = _part_keys(idempotency_key, len(parts))
        # Who may send comes first: an idempotent replay answers only a caller who passes it,
        # or the agent who sent it (a retry gets its first answer whatever happened since).
        if not await self._own_retry(conversation_id, agent, keys[0]):
            _authorize(conversation, agent)
        if idempotency_key is not None:
            await self._refuse_reused_key(conversation_id, idempotency_key, parts, keys)
        stored: list[Message] = []
        new: list[str] = []
        snapshot: Conversation | None = conversation
        async with self._storing.hold(conversation_id):  # the parts of one request stay together
            for part, key in zip(parts, keys, strict=True):
                # The first part is planned on the snapshot read above (a stale one costs one
                # compare-and-set retry), later ones on a fresh read.
                message, created = await self._submit_one(
                    conversation_id, snapshot, agent, part, key
                )
                snapshot = None
                stored.append(message)
                if created:
                    new.append(message.id)
        if new:
            self._spawn_in_order(conversation_id, new)
        return stored

    async def _own_retry(self, conversation_id: str, agent: AgentInfo, key: str | None) -> bool:
        """True when `agent` already sent a message under this Idempotency-Key."""
        if key is None:
            return False
        previous = await self.store.find_idempotent(conversation_id, key)
        return previous is not None and previous.agent == agent.id

    async def _refuse_reused_key(
        self,
        conversation_id: str,
        idempotency_key: str,
        parts: list[OutboundRequest],
        keys: list[str | None],
    ) -> None:
        """Refuse (and store nothing) when the key already stands for a different request.

        Each part is compared with the message stored under its key; a request split another
        way (one message where the first had several, or fewer parts) is different too.
        """
        for part, key in zip(parts, keys, strict=True):
            assert key is not None
            previous = await self.store.find_idempotent(conversation_id, key)
            if previous is not None:
                _require_same_request(previous, part)
        if len(parts) == 1:
            others = [f"{idempotency_key}#1"]
        else:
            others = [idempotency_key, f"{idempotency_key}#{len(parts) + 1}"]
        for other in others:
            if await self.store.find_idempotent(conversation_id, other) is not None:
                raise _key_reused()

    async def _read(self, conversation_id: str) -> Conversation:
        """The conversation, if it exists and its channel is configured on this node."""
        conversation = await self.store.get_conversation(conversation_id)
        if conversation is None:
            raise NotFound(f"no conversation {conversation_id}")
        if conversation.channel not in self.adapters:
            raise TransitionError(
                "invalid_transition", f"channel {conversation.channel} is not configured"
            )
        return conversation

    @staticmethod
    def _parts(
        conversation_id: str, request: OutboundRequest, limit: int | None
    ) -> list[OutboundRequest]:
        attachments = request.attachments
        if limit is None or len(attachments) <= limit:
            return [request]
        if request.template is not None or limit < 1:
            raise InvalidInput(
                f"this channel sends at most {limit} attachment(s) per message"
                + (" and a template carries no further ones" if request.template else "")
            )
        chunks = [attachments[i : i + limit] for i in range(0, len(attachments), limit)]
        first = replace(request, attachments=chunks[0])
        rest = [
            OutboundRequest(attachments=chunk, extra=dict(request.extra)) for chunk in chunks[1:]
        ]
        log.info("outbound.split", conversation_id=conversation_id, parts=len(chunks))
        # Each part says where it stands, so a request split another way is told apart.
        return [
            replace(part, extra={**part.extra, "part": {"number": number, "of": len(chunks)}})
            for number, part in enumerate([first, *rest], start=1)
        ]

    async def _submit_one(
        self,
        conversation_id: str,
        snapshot: Conversation | None,
        agent: AgentInfo,
        request: OutboundRequest,
        idempotency_key: str | None,
    ) -> tuple[Message, bool]:
        """Store one outbound message; True when it was created now (not an idempotent replay).

        `snapshot`, when given, is a fresh read of the conversation to plan the first attempt on.
        """
        for _ in range(CAS_ATTEMPTS):
            conversation = snapshot or await self._read(conversation_id)
            snapshot = None
            previous = None
            if idempotency_key is not None:
                previous = await self.store.find_idempotent(conversation_id, idempotency_key)
            # The agent's own retry gets its first answer, even if the conversation closed or
            # the window lapsed since; anyone else must first be allowed to send.
            if previous is None or previous.agent != agent.id:
                _authorize(conversation, agent)
            if previous is not None:
                _require_same_request(previous, request)
                return previous, False
            now = self.clock.now()
            adapter = self.adapters.get(conversation.channel)
            _check_window(conversation, request, now, getattr(adapter, "supports_templates", False))
            message = await self._build(conversation, agent, request)
            transition = lifecycle.agent_message(conversation, message, now)
            try:
                result = await self.store.add_outbound(
                    transition,
                    conversation.version,
                    message,
                    idempotency_key,
                    deliver_by=now + self.retry.redeliver_after,
                )
            except VersionConflict:
                continue
            if not result.created:  # a concurrent request with the same key stored it first
                _require_same_request(result.message, request)
            if result.created:
                log.info(
                    "outbound.queued",
                    conversation_id=conversation_id,
                    message_id=message.id,
                    agent=agent.id,
                )
            return result.message, result.created
        raise VersionConflict(f"conversation {conversation_id} kept changing, try again")

    async def _build(
        self, conversation: Conversation, agent: AgentInfo, request: OutboundRequest
    ) -> Message:
        now = self.clock.now()
        extra = dict(request.extra)
        if conversation.channel_type == "email":
            # The newest messages: what a reply answers is at the end of a long thread.
            recent = await self.store.list_recent_messages(conversation.id)
            extra["thread"] = thread_headers(recent)
        return Message(
            id=new_id("m"),
            conversation_id=conversation.id,
            channel=conversation.channel,
            channel_type=conversation.channel_type,
            provider=conversation.provider,
            direction=Direction.OUT,
            kind=request.kind,
            text=request.text,
            sent_at=now,
            received_at=now,
            status=DeliveryState.QUEUED,
            status_at=now,
            attachments=request.attachments,
            agent=agent.id,
            template=request.template,
            contact=conversation.contact,
            subject=conversation.subject,
            extra=extra,
        )

    def _spawn_in_order(self, conversation_id: str | None, message_ids: list[str]) -> None:
        """Deliver new messages in the background, one after the other, after every delivery
        to the same conversation started before them (the parts of a split message and
        replies sent in quick succession reach the customer in the order they were stored;
        each still has its own retries and its own redelivery deadline). Without
        `conversation_id` (a redelivery) the first message's is looked up."""

        async def in_order() -> None:
            conversation = conversation_id
            if conversation is None:
                try:
                    conversation = await self._conversation_of(message_ids[0])
                except StoreUnavailable as exc:  # the deadline comes again
                    log.warning(
                        "outbound.store_unavailable", message_id=message_ids[0], error=str(exc)
                    )
                    return
            if conversation is None:  # gone (retention): `deliver` clears its deadline
                await self._deliver_each(message_ids)
                return
            # A redelivery, or a delivery that has to wait its turn, starts late: its deadline
            # moves (see _postpone_redelivery).
            late = conversation_id is None or self._delivering.busy(conversation)
            async with self._delivering.hold(conversation):
                if late:
                    await self._postpone_redelivery(message_ids)
                await self._deliver_each(message_ids)

        task = asyncio.create_task(in_order(), name=f"deliver-{message_ids[0]}+")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_each(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            try:
                await self.deliver(message_id)
            except StoreUnavailable as exc:  # the deadline retries it once the store is back
                log.warning("outbound.store_unavailable", message_id=message_id, error=str(exc))
            except Exception:  # the next parts still go; the deadline retries this one
                log.exception("outbound.delivery_crashed", message_id=message_id)

    async def _conversation_of(self, message_id: str) -> str | None:
        async with self._looking_up:
            message = await self.store.get_message(message_id)
        return None if message is None else message.conversation_id

    async def _postpone_redelivery(self, message_ids: list[str]) -> None:
        """Messages whose delivery starts late (after waiting behind earlier ones, or taken
        over by a redelivery, whose deadline's claim lasts only the scheduler's lease) get
        their redelivery deadline moved to `redeliver_after` from now: otherwise another node
        (or this one's scheduler) would take them for abandoned while they are being sent."""
        due = self.clock.now() + self.retry.redeliver_after
        for message_id in message_ids:
            try:
                await self.store.set_deadline(message_target(message_id), DELIVER_KIND, due)
            except StoreUnavailable as exc:  # delivery goes on; the old deadline stands
                log.warning("outbound.store_unavailable", message_id=message_id, error=str(exc))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for deliveries in flight (graceful shutdown, tests); with `timeout`, cancel
        what is still running after that long (see DRAIN_TIMEOUT)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                cut = tuple(self._tasks)
                for task in cut:
                    task.cancel()
                await asyncio.gather(*cut, return_exceptions=True)
                log.warning("outbound.drain_cut_off", deliveries=len(cut))
                return
            await asyncio.wait(tuple(self._tasks), timeout=left)

    def redeliver(self, message_id: str) -> None:
        """Start delivering a message whose redelivery deadline came, in the background."""
        self._spawn_in_order(None, [message_id])

    async def deliver(self, message_id: str) -> None:
        """Send a stored message through its channel, retrying transient errors."""
        if message_id in self._in_flight:
            return  # this node is already delivering it (the redelivery deadline came early)
        self._in_flight.add(message_id)
        try:
            await self._deliver(message_id)
        finally:
            self._in_flight.discard(message_id)

    async def _deliver(self, message_id: str) -> None:
        message = await self.store.get_message(message_id)
        if message is None or message.status != DeliveryState.QUEUED:
            await self.store.clear_deadline(message_target(message_id), DELIVER_KIND)
            return
        conversation = await self.store.get_conversation(message.conversation_id)
        adapter = self.adapters.get(message.channel)
        if conversation is None or adapter is None:
            await self._failed(message, "not_deliverable", "the channel is not configured")
            return
        expires = conversation.window_expires_at
        if message.template is None and expires is not None and self.clock.now() >= expires:
            # Taken inside the window, still queued when it lapsed (an outage, a crash, a
            # provider that kept failing): free text may no longer go out, and a provider
            # would refuse it. The message fails; the conversation is the window timer's.
            await self._failed(
                message,
                "window_closed",
                "the reply window closed before the message could be sent: only an approved"
                " template can reach the customer now",
            )
            return
        await self._after_earlier(message)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientChannelError),
            stop=stop_after_attempt(self.retry.attempts),
            wait=_honouring_retry_after(
                wait_random_exponential(multiplier=self.retry.initial, max=self.retry.maximum),
                self.retry.maximum,
            ),
            reraise=True,
            before_sleep=lambda state: self._retrying(message, state),
        )
        reported = False
        try:
            result: SendResult | None = None
            async for attempt in retrying:
                with attempt:
                    # A send that timed out may have gone out all the same: if its report came
                    # meanwhile (it names our id), sending again would deliver it twice.
                    if attempt.retry_state.attempt_number > 1 and await self._reported(message_id):
                        reported = True
                    else:
                        result = await self._send(adapter, conversation, message)
        except ChannelError as exc:
            await self._failed(
                message,
                exc.provider_code or exc.code,
                exc.message or str(exc),
                exc.closes_window,
                attempts=retrying.statistics.get("attempt_number", 1),
            )
            return
        except Exception as exc:  # an adapter bug must not leave the message queued forever
            log.exception("outbound.adapter_crashed", message_id=message_id)
            await self._failed(message, "adapter_error", type(exc).__name__)
            return
        if reported:
            await self.store.clear_deadline(message_target(message_id), DELIVER_KIND)
            log.info("outbound.settled_by_report", message_id=message_id, channel=message.channel)
            return
        assert result is not None
        provider_id = result.provider_message_id
        if provider_id is None and result.status == DeliveryState.QUEUED:
            # Taken, to be reported on later, under no id of the provider's: our own id stands
            # for it (reports name it), and says the message left (`_being_sent_before`).
            provider_id = message.id
        status = DeliveryStatus(
            channel=message.channel,
            provider_message_id=provider_id or message.id,
            status=result.status,
            at=self.clock.now(),
        )
        try:
            recorded = await self.store.record_send(
                message_id,
                provider_message_id=provider_id,
                status=status if result.status != DeliveryState.QUEUED else None,
            )
        except Exception as exc:  # e.g. the provider answered an id another message carries
            if isinstance(exc, StoreUnavailable):  # an outage, not a bug: no traceback
                log.warning(
                    "outbound.record_crashed",
                    message_id=message_id,
                    provider_message_id=result.provider_message_id,
                    error=str(exc),
                )
            else:
                log.exception(
                    "outbound.record_crashed",
                    message_id=message_id,
                    provider_message_id=result.provider_message_id,
                )
            # Nothing may stay `queued` forever: the agent sees it failed, and why.
            await self._failed(
                message,
                "internal_error",
                f"the provider accepted the send (id {result.provider_message_id}) but its"
                f" outcome could not be recorded: {type(exc).__name__}",
            )
            return
        await self.store.clear_deadline(message_target(message_id), DELIVER_KIND)
        self._count(message.channel, str(result.status))
        if recorded.closes_window:  # a "window closed" report overtook the send's answer
            await close_window(self.store, message, self.clock)
        # Taken by the channel, in the status it answered (`queued` for a provider that
        # reports delivery later): not necessarily sent yet.
        log.info(
            "outbound.accepted",
            message_id=message_id,
            channel=message.channel,
            status=str(result.status),
            provider_message_id=result.provider_message_id,
            attempts=retrying.statistics.get("attempt_number", 1),
        )

    async def _after_earlier(self, message: Message) -> None:
        """Wait while a reply stored before this one is still being sent by another node.

        On one node, deliveries to a conversation already go one after the other (see
        `_spawn_in_order`); an agent's next reply may come in through another node, though
        (a load balancer without sticky sessions), while the first is still retrying. Only
        replies stored less than `longest` ago count: the node sending an older one still
        `queued` has ended its retries by now, or died (it then waits for its redelivery
        deadline). So the wait lasts until then at most, and each reply behind a reply a dead
        node left waits only for what is left of that span, not a whole span of its own.
        """
        if not self.other_nodes:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry.longest
        key = (message.channel, message.contact.address) if message.contact else None
        subscription = self.hub.subscribe(maxsize=64, key=key) if self.hub and key else None
        told = False
        poll = ORDER_POLL_FIRST
        try:
            while earlier := await self._being_sent_before(message):
                left = give_up - loop.time()
                if left <= 0:
                    log.warning(
                        "outbound.order_wait_gave_up",
                        message_id=message.id,
                        earlier=[m.id for m in earlier],
                    )
                    return
                if not told:
                    told = True
                    log.info(
                        "outbound.waiting_for_earlier",
                        message_id=message.id,
                        earlier=[m.id for m in earlier],
                    )
                await _news(subscription, min(left, poll))
                poll = min(poll * 2, ORDER_POLL)
        finally:
            if subscription is not None:
                subscription.close()

    async def _being_sent_before(self, message: Message) -> list[Message]:
        """Replies to the same conversation stored just before `message`, less than `longest`
        ago, that another node has not yet handed to the provider (see `_after_earlier`)."""
        before = await self.store.list_recent_messages(
            message.conversation_id, before=message.id, limit=ORDER_CHECK
        )
        recent_since = self.clock.now() - timedelta(seconds=self.retry.longest)
        return [
            m
            for m in before
            if m.direction == Direction.OUT
            and m.status == DeliveryState.QUEUED
            and m.provider_message_id is None
            and m.id not in self._in_flight
            and m.received_at > recent_since
        ]

    def _retrying(self, message: Message, state: RetryCallState) -> None:
        """Each retry is logged and counted: a provider that fails now and then is otherwise
        invisible until a message fails after its last attempt."""
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "outbound.retrying",
            message_id=message.id,
            channel=message.channel,
            attempt=state.attempt_number,
            of=self.retry.attempts,
            wait_s=round(state.upcoming_sleep, 3),
            error=str(error) if error is not None else None,
        )
        if self.observe_retry is not None:
            self.observe_retry(message.channel)

    async def _send(
        self, adapter: ChannelAdapter, conversation: Conversation, message: Message
    ) -> SendResult:
        """One try of `adapter.send`, bounded by `send_timeout`; what it returns is checked,
        since a plugin's mistake there would otherwise leave the message queued, to be sent
        again by every redelivery."""
        try:
            async with asyncio.timeout(self.retry.send_timeout):
                result = await adapter.send(conversation, message)
        except TimeoutError:
            raise TransientChannelError(
                f"the channel did not answer within {self.retry.send_timeout:g} s"
            ) from None
        if not isinstance(result, SendResult):
            raise TypeError(f"send() returned {type(result).__name__}, not a SendResult")
        if result.provider_message_id is not None and not isinstance(
            result.provider_message_id, str
        ):
            raise TypeError("send() returned a provider_message_id that is not a string")
        if result.status == DeliveryState.FAILED:  # accepted and failed at once: say so
            raise PermanentChannelError(
                "the channel reported the message failed as it took it", provider_code="send_failed"
            )
        return result

    async def _reported(self, message_id: str) -> bool:
        """Whether a provider report already settled this message (see `Ingestor._correlate`)."""
        message = await self.store.get_message(message_id)
        return (
            message is None
            or message.status != DeliveryState.QUEUED
            or message.provider_message_id is not None
        )

    async def _failed(
        self,
        message: Message,
        code: str,
        reason: str,
        closes_window: bool = False,
        attempts: int | None = None,
    ) -> None:
        status = DeliveryStatus(
            channel=message.channel,
            provider_message_id=message.provider_message_id or message.id,
            status=DeliveryState.FAILED,
            at=self.clock.now(),
            error_code=code,
            error_message=reason,
            closes_window=closes_window,
        )
        await self.store.record_send(message.id, provider_message_id=None, status=status)
        await self.store.clear_deadline(message_target(message.id), DELIVER_KIND)
        self._count(message.channel, "failed")
        log.warning(
            "outbound.failed",
            message_id=message.id,
            channel=message.channel,
            error_code=code,
            attempts=attempts,
        )
        if closes_window:
            await close_window(self.store, message, self.clock)

    def _count(self, channel: str, status: str) -> None:
        if self.observe is not None:
            self.observe(channel, status)


async def _news(subscription: Subscription | None, timeout: float) -> None:
    """Wait for the next event about a conversation's contact, or `timeout` seconds."""
    if subscription is None:
        await asyncio.sleep(timeout)
        return
    with contextlib.suppress(TimeoutError, Overflow):
        async with asyncio.timeout(timeout):
            await subscription.get()


__all__ = ["Outbound", "OutboundRequest", "PermanentChannelError", "RetryPolicy"]
