"""The running gateway's parts, wired once from the validated config.

Everything is built synchronously (so the aiohttp app can mount every adapter's routes before
it freezes); everything that needs the event loop or I/O is started by `gateway.app`'s cleanup
contexts, in dependency order, and stopped in reverse.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import structlog
from aiohttp import ClientSession

from gateway.actions import Actions
from gateway.api.http import Authenticator
from gateway.channels import ADAPTER_METHODS, ChannelAdapter, ChannelContext, ChannelType
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.directory import AgentInfo, Directory, QueueInfo
from gateway.distribution import Distributor
from gateway.errors import ChannelStartError, ConfigError
from gateway.hub import EventHub
from gateway.ids import new_id
from gateway.ingest import Ingestor
from gateway.lifecycle import Transition
from gateway.metrics import Metrics
from gateway.model import InboundMessage
from gateway.outbound import Outbound, RetryPolicy
from gateway.presence import Presence
from gateway.ratelimit import RateLimiter
from gateway.retention import EventRetention
from gateway.routing import Router
from gateway.sink import ChannelInbound
from gateway.store.base import MESSAGE_TARGET, Deadline, Store
from gateway.store.sqlite import SqliteStore
from gateway.timers import DeadlineHandler, Scheduler

log = structlog.get_logger("gateway.runtime")


def directory_from(config: GatewayConfig) -> Directory:
    return Directory(
        channels={c.name: c.policy() for c in config.channels},
        queues={
            q.name: QueueInfo(q.name, q.distribution, q.strategy, q.requeue_after)
            for q in config.queues
        },
        agents={
            a.id: AgentInfo(a.id, frozenset(a.queues), a.max_active, a.name) for a in config.agents
        },
        agent_disconnect_grace=config.presence.agent_disconnect_grace,
    )


def store_from(config: GatewayConfig) -> Store:
    """Open the configured backend: a SQLite file, or Redis for several processes."""
    if config.store.backend == "sqlite":
        return SqliteStore.from_url(config.store.url, synchronous=config.store.synchronous)
    from gateway.store.redis import RedisStore  # imported only by deployments that use it

    return RedisStore.from_url(config.store.url)


class _HttpHolder:
    """Gives adapters the one shared ClientSession, which exists only once the loop runs."""

    def __init__(self) -> None:
        self.session: ClientSession | None = None

    def __call__(self) -> ClientSession:
        if self.session is None:
            raise RuntimeError("the HTTP session exists once the server has started")
        return self.session


@dataclass
class RuntimeOptions:
    retry: RetryPolicy | None = None
    scheduler_poll: float = 1.0
    node: str | None = None
    run_scheduler: bool = True
    """Tests with a manual clock drive `runtime.scheduler.run_once()` (and
    `runtime.presence.heartbeat()`) themselves."""
    node_ttl: timedelta | None = None
    """How long a node's heartbeat counts (default: see `presence.default_heartbeat_ttl`)."""


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        channel_types: Mapping[str, ChannelType],
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        options = options or RuntimeOptions()
        self.options = options
        self.config = config
        self.clock = clock or SystemClock()
        self.node = options.node or f"{socket.gethostname()}-{new_id('n')}"
        self.store = store or store_from(config)
        self.directory = directory_from(config)
        self.router = Router(config)
        self.metrics = Metrics()
        self.hub = EventHub(self.store)
        self.http = _HttpHolder()
        self.distributor = Distributor(self.store, self.clock, self.directory)
        self.ingestor = Ingestor(
            self.store,
            self.clock,
            route=self._route,
            policy_for=self.directory.policy,
            after_commit=self._distribute,
            observe=self.metrics.observe_ingest,
            observe_status=self.metrics.observe_status,
        )
        self.actions = Actions(self.store, self.clock, self.directory, self._after_change)
        self.adapters: dict[str, ChannelAdapter] = {}
        self.limiter = RateLimiter.for_store(config.store.url)
        self.outbound = Outbound(
            self.store,
            self.clock,
            self.adapters,
            retry=options.retry or retry_policy(config),
            observe=self.metrics.observe_outbound,
            observe_retry=self.metrics.observe_retry,
            hub=self.hub,
            other_nodes=not config.store.url.startswith("sqlite:"),
        )
        self.deadlines = DeadlineHandler(
            self.store, self.clock, self.directory, take_back=self._take_back
        )
        self.retention = EventRetention(self.store, self.clock, config.store.event_retention)
        self.scheduler = Scheduler(
            self.store,
            self.clock,
            self._on_deadline,
            batch_handler=self.deadlines.batch,
            poll_interval=options.scheduler_poll,
            observe_lag=self.metrics.observe_lag,
            sweep=self._housekeeping,
            node=self.node,
        )
        self.presence = Presence(
            self.store,
            self.clock,
            self.distributor,
            self.node,
            config.presence.agent_disconnect_grace,
            self.scheduler.poke,
            heartbeat_ttl=options.node_ttl,
            take_back=self.actions.take_back,
        )
        self.auth = Authenticator(
            {a.token_sha256: a.id for a in config.agents},
            self.directory.agents,
            {i.token_sha256: i.name for i in config.integrators},
        )
        self.started = False
        for channel in config.channels:
            channel_type = channel_types.get(channel.type)
            if channel_type is None:
                raise ConfigError(f"channels: no plugin provides channel type {channel.type!r}")
            context = ChannelContext(
                config=channel,
                public_url=config.server.public_url,
                inbound=ChannelInbound(
                    self.ingestor,
                    channel.name,
                    channel.type,
                    frozenset(c.name for c in config.channels if c.type == channel.type),
                ),
                kv=self.store,
                clock=self.clock,
                log=structlog.get_logger(f"gateway.channel.{channel.name}").bind(
                    channel=channel.name
                ),
                history=self.store,
                events=self.hub,
                http_provider=self.http,
                limiter=self.limiter,
                trusted_proxies=tuple(config.server.trusted_proxies),
            )
            self.adapters[channel.name] = _made_adapter(channel_type, channel.name, context)

    def _route(self, message: InboundMessage) -> str:
        return self.router.queue_for(
            message.channel, message.channel_type, message.text, message.contact.address
        )

    async def _distribute(self, queue: str) -> None:
        await self.distributor.distribute(queue)

    async def _after_change(self, transition: Transition) -> None:
        """Capacity may have freed up (close, pending, transfer): let distribution run."""
        conversation = transition.conversation
        distribute = transition.distribute
        if distribute:
            await self.distributor.distribute(distribute)
        if conversation.agent:
            await self.distributor.on_agent_change(conversation.agent)
        self.scheduler.poke()

    async def _take_back(self, agent_id: str) -> None:
        """An agent's return, seen by a timer (see `Actions.take_back`), then distribution."""
        agent = self.directory.agents.get(agent_id)
        if agent is None:
            return
        await self.actions.take_back(agent)
        await self.distributor.on_agent_change(agent_id)

    async def _housekeeping(self) -> None:
        """The scheduler's pass, after the due deadlines: hand waiting conversations to free
        agents, prune the event log (see `gateway.retention`)."""
        await self.distributor.distribute_all()
        await self.retention.run()

    async def _on_deadline(self, deadline: Deadline) -> None:
        if deadline.target.startswith(MESSAGE_TARGET):
            # In the background: a delivery may retry for minutes, and the scheduler's pass
            # must go on firing every other deadline (grace, windows, no-agent) meanwhile.
            self.outbound.redeliver(deadline.target[len(MESSAGE_TARGET) :])
            return
        await self.deadlines(deadline)


def retry_policy(config: GatewayConfig) -> RetryPolicy:
    """The outbound retry policy config.yaml asks for. Another node takes a delivery over only
    well after its retries could still be running (10 minutes, or twice the longest sequence)."""
    outbound = config.outbound
    return RetryPolicy(
        attempts=outbound.retry_attempts,
        initial=outbound.retry_initial.total_seconds(),
        maximum=outbound.retry_max_delay.total_seconds(),
        redeliver_after=max(RetryPolicy().redeliver_after, 2 * outbound.longest()),
        send_timeout=outbound.send_timeout.total_seconds(),
    )


def _made_adapter(channel_type: ChannelType, name: str, context: ChannelContext) -> ChannelAdapter:
    """The adapter a plugin's factory makes for channel `name`. A factory that raises, or that
    returns something without the adapter protocol's methods, is named in one line
    (`ChannelStartError`) instead of a traceback from wherever the gateway first used it."""
    who = f"channel {name!r} ({channel_type.name})"
    try:
        adapter = channel_type.factory(context)
    except Exception as exc:
        raise ChannelStartError(
            f"{who}: its plugin could not make the adapter: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [m for m in ADAPTER_METHODS if not callable(getattr(adapter, m, None))]
    if missing:
        raise ChannelStartError(
            f"{who}: its plugin's adapter ({type(adapter).__name__}) lacks {', '.join(missing)}"
        )
    return adapter
