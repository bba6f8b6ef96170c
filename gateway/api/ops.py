"""Ops endpoints: liveness, readiness (store reachable, adapters started), Prometheus metrics,
and the OpenAPI document of the agent API."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.http import json_response
from gateway.api.openapi import openapi_document
from gateway.appkeys import RUNTIME

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers and every adapter started; degraded channels are listed."""
    runtime = request.app[RUNTIME]
    store_ok = await runtime.store.ping()
    channels = {}
    for name, adapter in runtime.adapters.items():
        health = adapter.health()
        channels[name] = {"ok": health.ok, "detail": health.detail}
    ready = store_ok and runtime.started
    body = {
        "status": "ready" if ready else "not_ready",
        "store": "ok" if store_ok else "unreachable",
        "adapters_started": runtime.started,
        "channels": channels,
        "degraded": sorted(n for n, c in channels.items() if not c["ok"]),
    }
    return json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.metrics.set_conversations(
        await runtime.store.count_by_state(), (queue.name for queue in runtime.config.queues)
    )
    presence = await runtime.store.presence()
    runtime.metrics.agents_online.set(sum(1 for p in presence.values() if p.online))
    for name, adapter in runtime.adapters.items():
        runtime.metrics.channel_up.labels(name).set(1 if adapter.health().ok else 0)
    return web.Response(
        body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())
