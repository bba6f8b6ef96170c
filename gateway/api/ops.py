"""Ops endpoints: liveness, readiness (store reachable, adapters started), Prometheus metrics,
and the OpenAPI document of the agent API."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from gateway.api.http import json_response
from gateway.api.openapi import openapi_document
from gateway.appkeys import RUNTIME
from gateway.channels import ChannelAdapter, ChannelHealth
from gateway.errors import StoreUnavailable
from gateway.watch import store_problem, store_ready

log = structlog.get_logger("gateway.ops")

READY_TIMEOUT = 0.8
"""How long /readyz waits for the store (seconds). A hung Redis holds every call for the
store's own bound (5 s), but health checkers give up sooner (Kubernetes: 1 s) and would see a
timeout instead of the 503 that says why; a store this slow is not ready anyway."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format every Prometheus reads (2.x and 3.x); what the body is."""
METRICS_STORE_TIMEOUT = 2.0
"""How long /metrics waits for the store's gauges before it serves the rest without them."""


routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def channel_health(name: str, adapter: ChannelAdapter) -> ChannelHealth:
    """An adapter's own report; one that raises is degraded, not a 500 of /readyz and
    /metrics for every channel."""
    try:
        health = adapter.health()
        if not isinstance(health, ChannelHealth):
            raise TypeError(f"health() returned {type(health).__name__}, not a ChannelHealth")
        return health
    except Exception as exc:
        log.warning("channel.health_failed", channel=name, error=f"{type(exc).__name__}: {exc}")
        return ChannelHealth(ok=False, detail=f"health check failed: {type(exc).__name__}")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers and every adapter started; degraded channels are listed.

    Anyone who can reach the node may ask (load balancers send no token), but why a channel is
    degraded (a provider's error text, a mail server's name and its refusal) is shown only to
    a valid agent or integrator token: to others `detail` is empty.
    """
    runtime = request.app[RUNTIME]
    problem = await store_problem(runtime.store, READY_TIMEOUT)
    store_ok = problem is None
    show_detail = runtime.auth.known(request)
    channels = {}
    for name, adapter in runtime.adapters.items():
        health = channel_health(name, adapter)
        channels[name] = {"ok": health.ok, "detail": health.detail if show_detail else ""}
    ready = store_ok and runtime.started
    body = {
        "status": "ready" if ready else "not_ready",
        "store": "ok" if store_ok else "unreachable",
        # Why, in a word: `unreachable`, `timeout`, `writes_failing` or `files_gone`.
        "store_problem": problem,
        "adapters_started": runtime.started,
        "channels": channels,
        "degraded": sorted(n for n, c in channels.items() if not c["ok"]),
    }
    return json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The process's own counters always; the gauges read from the store only while it answers.

    During a store outage those gauges are left out (no `gateway_conversations` series;
    `gateway_agents_online` is NaN) rather than repeating their last values: a dashboard shows
    "no data" for what nobody can know, and the counters, which tell what happened during the
    outage, are still scraped. `gateway_store_up` says which case a scrape is (alert on 0).
    """
    runtime = request.app[RUNTIME]
    try:
        async with asyncio.timeout(METRICS_STORE_TIMEOUT):
            counts = await runtime.store.count_by_state()
            presence = await runtime.store.presence()
    except (StoreUnavailable, TimeoutError) as exc:
        error = str(exc) or f"no answer within {METRICS_STORE_TIMEOUT:g} s"
        log.warning("metrics.store_unavailable", error=error)
        runtime.metrics.conversations.clear()
        runtime.metrics.agents_online.set(float("nan"))
        runtime.metrics.store_up.set(0)
    else:
        runtime.metrics.set_conversations(counts, (queue.name for queue in runtime.config.queues))
        runtime.metrics.agents_online.set(sum(1 for p in presence.values() if p.online))
        # Reads work on a full disk or an out-of-memory Redis: up means writes work too.
        up = await store_ready(runtime.store, METRICS_STORE_TIMEOUT)
        runtime.metrics.store_up.set(1 if up else 0)
    for name, adapter in runtime.adapters.items():
        runtime.metrics.channel_up.labels(name).set(1 if channel_health(name, adapter).ok else 0)
    return web.Response(
        body=runtime.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
