"""The channel adapter protocol: everything a third party needs to add a channel type.

A channel type is a Python package that declares an entry point in the `gateway` group, e.g.

    [project.entry-points.gateway]
    sms_acme = "acme_gateway.sms"

The module implements the `register_channel_types` hook (see `gateway.hookspecs`) and returns
one or more `ChannelType`s. Each `ChannelType` names the `type:` value ops write in config.yaml,
the pydantic model that validates one channel instance's config (a subclass of
`ChannelConfig`), and a factory that builds the adapter object for one configured instance.

The gateway then, for every configured instance of the type:

1. validates its section with `config_model` (unknown keys and wrong types are refused, errors
   name the key path; secrets are written as `${VAR}` and read from the environment);
2. calls `factory(context)` with a `ChannelContext` that carries the validated config, the
   shared aiohttp `ClientSession`, the `Inbound` sink, a small durable key-value store for
   cursors, the clock, a bound logger, read access to stored messages (`history`) and the
   live event feed (`events`);
3. mounts `POST /webhooks/{name}` and `GET /webhooks/{name}` onto `adapter.handle_webhook` and
   any extra `adapter.routes()`;
4. awaits every `adapter.start()` together before the server listens, each within 30 s (one
   that raises or runs over stops the start-up, naming its channel), and `adapter.stop()` at
   shutdown (10 s each);
5. calls `adapter.send(conversation, message)` for every agent message on a conversation of
   this channel.

Rules an adapter follows:

- Hand every inbound message to `context.inbound.message(...)` and every delivery report to
  `context.inbound.status(...)`, and answer the provider only after they return: they return
  once the message is durably stored (acknowledge after commit). Process every item of a
  batched payload; one bad item must not drop the others.
- Give each inbound message a stable `provider_message_id`: a retry or re-delivery of the same
  message must carry the same id, so the store deduplicates it.
- Verify webhook signatures before reading anything else; raise or answer 403 when wrong.
- `send` returns a `SendResult` or raises `TransientChannelError` (the gateway retries with
  backoff) or `PermanentChannelError` (the message is marked failed with the reason; set
  `closes_window=True` when the provider says the reply window is closed).
- Never block the event loop and never create an HTTP session per call: use `context.http`.
- Never import another adapter or anything under `plugins/`.

Optional capabilities an adapter may add, found by `isinstance` on the running adapter:

- `MediaSource`: download the media of an inbound attachment on an agent's request
  (`GET /api/v1/conversations/{id}/messages/{message_id}/attachments/{index}`).
- `MessageMediaSource`: the same for channels whose media travels inside the stored message
  itself (an email's MIME parts): the adapter gets the message too.
- `ClosesConnections`: close long-lived client connections (sockets) as soon as the node
  starts shutting down, before it waits for open requests to finish.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog
from aiohttp import ClientSession, web
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway.clientaddr import Network, client_address
from gateway.clock import Clock
from gateway.durations import Duration, TimerDuration
from gateway.lifecycle import ChannelPolicy
from gateway.model import (
    Attachment,
    Conversation,
    DeliveryState,
    DeliveryStatus,
    Event,
    InboundMessage,
    Message,
)
from gateway.ratelimit import RateLimiter


def refuse_boolean_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """pydantic reads `true` as 1 for a number, so `port: true` would listen on port 1; in a
    config file that is a mistake. Config models call this for every field (mode="before")."""
    if isinstance(value, bool) and info.field_name is not None:
        annotation = model.model_fields[info.field_name].annotation
        kinds = typing.get_args(annotation) or (annotation,)
        if bool not in kinds and any(kind in (int, float) for kind in kinds):
            raise ValueError("expected a number, not true or false")
    return value


class ChannelConfig(BaseModel):
    """Fields every channel instance has; a channel type subclasses it with its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def refuse_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_boolean_number(cls, value, info)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    type: str
    reply_window: Duration | None = None
    no_agent_timeout: TimerDuration | None = None

    def policy(self) -> ChannelPolicy:
        """Return the session rules the lifecycle applies to this channel's conversations."""
        return ChannelPolicy(reply_window=self.reply_window, no_agent_timeout=self.no_agent_timeout)

    def unique_values(self) -> dict[str, str]:
        """Settings no two instances of this type may share, by key (e.g. one phone number
        is one channel: traffic for it could go to either); the config refuses a repeat."""
        return {}

    def contact_address(self, written: str) -> str:
        """A customer's address as this channel stores it, from the way a person may write
        it (`gateway route --from`): routing rules match the stored form, so the dry run must
        match that too. As written, by default."""
        return written


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a provider said when it accepted an outbound message."""

    provider_message_id: str | None
    status: DeliveryState = DeliveryState.SENT


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    ok: bool
    detail: str = ""


class Inbound(Protocol):
    """The ingest path adapters hand normalized traffic to; returns after a durable commit."""

    async def message(self, inbound: InboundMessage) -> Any:
        """Store a customer message (deduplicated); returns the ingest result."""
        ...

    async def status(self, status: DeliveryStatus) -> Any:
        """Apply a delivery report (forward-only; unknown ids are logged, not errors)."""
        ...


class KeyValue(Protocol):
    """Small durable values an adapter keeps across restarts (e.g. an IMAP cursor)."""

    async def kv_get(self, key: str) -> str | None: ...

    async def kv_set(self, key: str, value: str) -> None: ...

    async def kv_compare_set(self, key: str, expected: str | None, value: str) -> bool:
        """Set `key` to `value` only if it currently holds `expected` (None: absent)."""
        ...


class MessageHistory(Protocol):
    """Read access to stored conversations, for channels that replay history (web chat)."""

    async def find_open_conversation(self, channel: str, address: str) -> Conversation | None: ...

    async def get_message(self, message_id: str) -> Message | None: ...

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def list_recent_messages(
        self, conversation_id: str, *, before: str | None = None, limit: int = 1000
    ) -> list[Message]:
        """The newest `limit` messages of a conversation stored before `before` (see Store)."""
        ...

    async def find_message(self, channel: str, provider_message_id: str) -> Message | None:
        """The message stored under a provider's id on a channel (a resend's original)."""
        ...

    async def list_contact_messages(
        self, channel: str, address: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Message]: ...


class EventSubscription(Protocol):
    async def get(self) -> Event:
        """Return the next live event (raises if the subscriber fell too far behind)."""
        ...

    def close(self) -> None: ...


class EventFeed(Protocol):
    """Live events committed by any node, for channels that push to customers (web chat)."""

    def subscribe(
        self,
        accept: Callable[[Event], bool] = ...,
        maxsize: int = ...,
        key: tuple[str, str] | None = None,
    ) -> Any:
        """Subscribe to live events; `key=(channel, address)` narrows to one customer."""
        ...

    async def broadcast(self, event: Event) -> None:
        """Fan out an ephemeral event (e.g. `conversation.typing`) to every node, unstored."""
        ...


@dataclass(slots=True)
class ChannelContext:
    """Everything the gateway gives one adapter instance.

    `http` is the process-wide aiohttp session; it exists once the server has started, so use
    it from `start`, `send` and request handlers, not from the factory.
    """

    config: ChannelConfig
    public_url: str
    inbound: Inbound
    kv: KeyValue
    clock: Clock
    log: structlog.stdlib.BoundLogger
    history: MessageHistory
    events: EventFeed
    http_provider: Callable[[], ClientSession]
    settings: dict[str, Any] = field(default_factory=dict)
    limiter: RateLimiter = field(default_factory=RateLimiter.in_memory)
    """Rate limits for public endpoints, shared by every node on the Redis store."""
    trusted_proxies: Sequence[Network] = ()
    """`server.trusted_proxies`: see `client_address`."""

    @property
    def name(self) -> str:
        return self.config.name

    def client_address(self, request: web.Request) -> str:
        """The caller's IP address, through trusted load balancers (for per-client limits)."""
        return client_address(request, self.trusted_proxies)

    @property
    def http(self) -> ClientSession:
        return self.http_provider()

    def webhook_url(self) -> str:
        """Return the public URL providers call for this channel (what they sign)."""
        return f"{self.public_url.rstrip('/')}/webhooks/{self.config.name}"


@runtime_checkable
class ChannelAdapter(Protocol):
    """One running channel instance. See the module docstring for the rules."""

    name: str
    channel_type: str
    provider: str

    def policy(self) -> ChannelPolicy:
        """Return the reply window and no-agent timeout of this instance."""
        ...

    def routes(self) -> Sequence[web.RouteDef]:
        """Return extra HTTP routes this channel serves (web chat pages, sockets), under a
        prefix of the channel type's own (`/webchat/...`): the gateway's paths (`/api/`,
        `/webhooks/`, `/inbox`, `/healthz`, `/readyz`, `/metrics`) are refused at start."""
        ...

    async def start(self) -> None:
        """Start background work (IMAP IDLE loops, ...); return once running."""
        ...

    async def stop(self) -> None:
        """Stop background work; called once at shutdown."""
        ...

    async def handle_webhook(self, request: web.Request) -> web.StreamResponse:
        """Answer `POST`/`GET /webhooks/{name}`: verify, normalize, hand to inbound, ack."""
        ...

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        """Deliver an agent message (text, template or attachments) to the customer."""
        ...

    def health(self) -> ChannelHealth:
        """Report whether the channel is working (shown by /readyz and /metrics)."""
        ...


@dataclass(frozen=True, slots=True)
class MediaContent:
    """Downloaded media: the bytes and the type the provider declared (None if it did not)."""

    data: bytes
    mime_type: str | None = None


@runtime_checkable
class MediaSource(Protocol):
    """An adapter that can fetch the media behind its inbound attachments.

    Attachments only reference media at the provider (an id or a URL that needs credentials
    and may expire), so agents download through the gateway, which asks the adapter. The
    adapter decides which hosts it will contact: a URL in an attachment came from a webhook
    and must never make the gateway fetch an arbitrary address (server-side request forgery).

    Raise `TransientChannelError` when the provider may answer later and
    `PermanentChannelError` when it refused or the reference is unusable; the API answers
    both with 502 and the error's message.
    """

    async def fetch_media(self, attachment: Attachment) -> MediaContent:
        """Download the media `attachment` refers to."""
        ...


@runtime_checkable
class MessageMediaSource(Protocol):
    """An adapter whose attachments are part of the message it stored (an email keeps its MIME
    parts in `raw`), so fetching one needs the message, not a call to the provider.

    Raise `PermanentChannelError` when the content was not kept (too large) or cannot be
    found; the API answers 502 with the error's message.
    """

    async def fetch_message_media(self, message: Message, attachment: Attachment) -> MediaContent:
        """Return the content of `attachment`, one of `message.attachments`."""
        ...


@runtime_checkable
class ClosesConnections(Protocol):
    """An adapter that holds client connections open (web chat visitors' sockets).

    On shutdown the server stops accepting, then waits (up to its shutdown timeout) for open
    requests, and an open socket is one; `stop()` only runs after that. `close_connections`
    runs first: close each socket with 1001 (going away) so clients reconnect to another node
    at once. Keep serving requests already in flight; this is not `stop()`.
    """

    async def close_connections(self) -> None:
        """Close every long-lived client connection of this channel (with 1001)."""
        ...


AdapterFactory = Callable[[ChannelContext], ChannelAdapter]
ADAPTER_METHODS = ("routes", "start", "stop", "handle_webhook", "send", "health")
"""What an adapter must have (`ChannelAdapter`), checked on a registered class before any
config is read, and on what a factory returns when the gateway starts."""


@dataclass(frozen=True, slots=True)
class ChannelType:
    """What a plugin registers: the config `type:` name, its config model and adapter factory."""

    name: str
    config_model: type[ChannelConfig]
    factory: AdapterFactory
    version: str = "0"
    description: str = ""


class BaseAdapter:
    """Convenience base with the defaults most adapters share (no extra routes, healthy)."""

    channel_type = ""
    provider = ""
    max_attachments: int | None = None
    """How many attachments one outbound message may carry (None: no limit). An agent's reply
    with more is stored and sent as several messages, in order (see `Outbound.submit`)."""
    supports_templates: bool = False
    """Whether `send` can deliver a `template` (WhatsApp's approved templates); where it
    cannot (the default: templates are a provider's feature a channel opts into), an agent's
    template is refused with 400 before anything is stored. An adapter may
    also define `check_outbound(request)` (a `gateway.outbound.OutboundRequest`), raising
    InvalidInput for what its provider can only refuse (a Twilio template not named by its
    Content SID), checked at the same point."""

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self.name = context.config.name

    def policy(self) -> ChannelPolicy:
        return self.context.config.policy()

    def routes(self) -> Sequence[web.RouteDef]:
        return ()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle_webhook(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    def health(self) -> ChannelHealth:
        return ChannelHealth(ok=True)


OnStarted = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class CommandContext:
    """What a plugin command runs with: config, the opened store, ingest and the adapters."""

    config: Any
    store: Any
    inbound: Inbound
    adapters: dict[str, ChannelAdapter]
    clock: Clock


@dataclass(frozen=True, slots=True)
class Command:
    """A `gateway` sub-command contributed by a plugin (see the `register_commands` hook)."""

    words: tuple[str, ...]
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any, CommandContext], Awaitable[int]]
