"""The aiohttp application factory.

Every long-lived resource has a cleanup context, set up in dependency order and torn down in
reverse: the store, the shared HTTP client session, the event hub, the adapters, the scheduler.
On shutdown aiohttp first stops accepting connections and lets in-flight requests finish; only
then do these contexts unwind, so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import ClientSession, ClientTimeout, web
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from gateway.api import agent, events, inbox, ops, stream
from gateway.api.http import request_context
from gateway.api.media import routes as media_routes
from gateway.api.stream import MAX_STREAMS_PER_AGENT
from gateway.appkeys import AGENT_SOCKETS, AGENT_STREAMS, RUNTIME, STOPPING, STREAM_FRAMES
from gateway.channels import ChannelAdapter, ChannelType, ClosesConnections
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.connlimit import ConnectionCounter
from gateway.errors import (
    ChannelStartError,
    ConfigError,
    StoreUnavailable,
    refused_credentials,
)
from gateway.outbound import DRAIN_TIMEOUT
from gateway.reconcile import reconcile
from gateway.runtime import Runtime, RuntimeOptions
from gateway.store.base import Store
from gateway.watch import NodeWatch
from gateway.webhooks import routes as webhook_routes

log = structlog.get_logger("gateway.app")


def create_app(
    config: GatewayConfig,
    channel_types: Mapping[str, ChannelType],
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    options: RuntimeOptions | None = None,
) -> web.Application:
    runtime = Runtime(config, channel_types, clock=clock, store=store, options=options)
    app = web.Application(
        middlewares=[request_context],
        client_max_size=config.server.max_body_bytes,
        # Compressed bodies are refused unread (see `request_context`), never inflated here.
        handler_args={"auto_decompress": False},
    )
    app[RUNTIME] = runtime
    app.add_routes(ops.routes)
    app.add_routes(agent.routes)
    app.add_routes(stream.routes)
    app.add_routes(events.routes)
    app.add_routes(media_routes)
    app.add_routes(inbox.routes)
    app.add_routes(webhook_routes)
    mounted: dict[tuple[str, str], str] = {}
    for adapter in runtime.adapters.values():
        for route in adapter.routes():
            _check_plugin_route(adapter.channel_type, route.path)
            # Instances of one type share static assets (e.g. /webchat/widget.js): mount once.
            key = (route.method, route.path)
            owner = mounted.get(key)
            if owner == adapter.channel_type:
                continue
            if owner is not None:
                raise ConfigError(
                    f"channel types {owner!r} and {adapter.channel_type!r} both route"
                    f" {route.method} {route.path}"
                )
            mounted[key] = adapter.channel_type
            route.register(app.router)
    app[AGENT_SOCKETS] = set()
    app[AGENT_STREAMS] = ConnectionCounter(MAX_STREAMS_PER_AGENT)
    app[STREAM_FRAMES] = stream.Frames(app[RUNTIME])
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stopping)
    app.on_shutdown.append(stream.close_agent_sockets)
    app.on_shutdown.append(_close_channel_connections)
    app.cleanup_ctx.extend([_store, _http, _hub, _adapters, _scheduler])
    return app


async def _stopping(app: web.Application) -> None:
    app[STOPPING].set()


RESERVED_PATHS = ("/api/", "/webhooks/", "/inbox", "/healthz", "/readyz", "/metrics")
"""The gateway's own paths: a plugin route there would be shadowed by them, or shadow them
(aiohttp may match a plain path before `/webhooks/{channel}`), silently either way."""


def _check_plugin_route(channel_type: str, path: str) -> None:
    if path.startswith(RESERVED_PATHS) or path in {"/api", "/webhooks"}:
        raise ConfigError(
            f"channel type {channel_type!r} routes {path}, a path of the gateway's own"
            f" ({', '.join(RESERVED_PATHS)}); give its routes a prefix of its own, such as"
            f" /{channel_type}/"
        )


async def _close_channel_connections(app: web.Application) -> None:
    """Shutdown, before aiohttp waits for open requests: channels close their sockets (1001)."""
    for adapter in app[RUNTIME].adapters.values():
        if isinstance(adapter, ClosesConnections):
            try:
                await adapter.close_connections()
            except Exception:
                log.exception("channel.close_connections_failed", channel=adapter.name)


STARTUP_RETRY_MAX_WAIT = 5.0
"""The longest pause between two tries to reach the store at start-up (seconds)."""
ADAPTER_START_TIMEOUT = 30.0
"""Seconds each adapter's `start()` gets: past it the gateway's start-up fails, naming the
channel (start() is for setting up; network work belongs in background tasks it starts)."""
ADAPTER_STOP_TIMEOUT = 10.0
"""Seconds each adapter's `stop()` gets at shutdown; one that hangs must not keep the others
(and the store) from closing."""


async def _store(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await _open_store(runtime)
    await runtime.presence.startup()
    moved = await reconcile(runtime.store, runtime.clock, runtime.directory, runtime.router)
    if moved:
        log.warning("reconcile.done", conversations=len(moved))
    yield
    await runtime.distributor.stop()
    await runtime.store.close()
    await runtime.limiter.close()


async def _open_store(runtime: Runtime) -> None:
    """Open the store, waiting up to `store.startup_wait` for one that is down or loading.

    Started together (a compose file, a host's boot), the gateway may come up before Redis
    does, or while Redis replays its AOF; exiting at once then leaves the gateway down, or
    restarting in a loop, for what resolves itself in seconds. Each failed try is logged with
    its reason; after the wait the last error ends the start-up as before.
    """
    store = runtime.store

    def outage(exc: BaseException) -> bool:
        return isinstance(exc, StoreUnavailable) and not refused_credentials(exc)

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "store.waiting",
            attempt=state.attempt_number,
            retry_in=round(state.upcoming_sleep, 2),
            error=str(error),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(outage),
        stop=stop_after_delay(runtime.config.store.startup_wait.total_seconds()),
        wait=wait_exponential(multiplier=0.2, max=STARTUP_RETRY_MAX_WAIT),
        before_sleep=waiting,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            try:
                await store.open()
            except StoreUnavailable:
                with contextlib.suppress(Exception):
                    await store.close()  # what the failed try had set up: the next one starts clean
                raise
    if retrying.statistics.get("attempt_number", 1) > 1:
        log.info("store.reached", attempts=retrying.statistics["attempt_number"])


async def _http(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    session = ClientSession(timeout=ClientTimeout(total=30))
    runtime.http.session = session
    yield
    runtime.http.session = None
    await session.close()


async def _hub(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.hub.start()
    yield
    await runtime.hub.stop()


async def _adapters(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    started: list[ChannelAdapter] = []
    try:
        # Together, each bounded: sixty channels start in the time of the slowest, and one
        # whose start() hangs is named after ADAPTER_START_TIMEOUT instead of keeping the
        # node from ever listening, with nothing in the log.
        outcomes = await asyncio.gather(
            *(_start_adapter(adapter, started) for adapter in runtime.adapters.values()),
            return_exceptions=True,
        )
        for outcome in outcomes:  # the first failure in config order
            if isinstance(outcome, BaseException):
                raise outcome
        runtime.started = True
        yield
    finally:
        runtime.started = False
        await runtime.outbound.drain(timeout=DRAIN_TIMEOUT)
        for adapter in reversed(started):
            try:
                async with asyncio.timeout(ADAPTER_STOP_TIMEOUT):
                    await adapter.stop()
            except TimeoutError:
                log.warning(
                    "channel.stop_timeout", channel=adapter.name, seconds=ADAPTER_STOP_TIMEOUT
                )
            except Exception:
                log.exception("channel.stop_failed", channel=adapter.name)


async def _start_adapter(adapter: ChannelAdapter, started: list[ChannelAdapter]) -> None:
    """Start one adapter within ADAPTER_START_TIMEOUT; `ChannelStartError` names it if not."""
    name, kind = adapter.name, adapter.channel_type
    try:
        async with asyncio.timeout(ADAPTER_START_TIMEOUT) as bound:
            await adapter.start()
    except TimeoutError as exc:
        if not bound.expired():  # the adapter's own time-out, raised from its start()
            log.exception("channel.start_failed", channel=name, type=kind)
            raise ChannelStartError(
                f"channel {name!r} ({kind}) could not start: {type(exc).__name__}: {exc}"
            ) from exc
        log.error("channel.start_timeout", channel=name, type=kind, seconds=ADAPTER_START_TIMEOUT)
        started.append(adapter)  # it may have started part of its work: stop() gets a chance
        raise ChannelStartError(
            f"channel {name!r} ({kind}) did not start within {ADAPTER_START_TIMEOUT:g} s"
        ) from None
    except Exception as exc:
        log.exception("channel.start_failed", channel=name, type=kind)
        raise ChannelStartError(
            f"channel {name!r} ({kind}) could not start: {type(exc).__name__}: {exc}"
        ) from exc
    started.append(adapter)
    log.info("channel.started", channel=name, type=kind)


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    """The background loops: the deadline scheduler, this node's presence heartbeat, and its
    watch over the store and its file descriptors (`gateway.watch`)."""
    runtime = app[RUNTIME]
    if not runtime.options.run_scheduler:
        yield
        return
    task = asyncio.create_task(runtime.scheduler.run_forever(), name="scheduler")
    heartbeat = asyncio.create_task(runtime.presence.run_heartbeats(), name="heartbeat")
    watch = asyncio.create_task(NodeWatch(runtime.store).run_forever(), name="watch")
    yield
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    runtime.scheduler.stop()
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat
    try:
        await runtime.presence.leave()
    except StoreUnavailable as exc:  # the other nodes reap us after the heartbeat TTL
        log.warning("presence.leave_failed", error=str(exc))
    except Exception:
        log.exception("presence.leave_failed")
