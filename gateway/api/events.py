"""`GET /api/v1/events?after=CURSOR`: the ordered, resumable normalized event stream.

Integrators page through the log with the cursor of the last event they processed; `wait=N`
long-polls up to N seconds for the first new event. A cursor never repeats or skips an event
because the log is append-only and cursors follow commit order.

Who sees what: an integrator token (config `integrators`) reads every event; an agent token
reads only the events of conversations the agent may see (their queues, or assigned to them:
the same rule as their live stream), so the log is no way around the queue restriction. The
cursor returned is that of the last event *scanned*, so an agent's next page never rescans
events that were not theirs.

`gap` is true when the event retention (`store.event_retention`) deleted events after `after`
before the reader got them: the page goes on from the oldest event kept, and the reader should
rebuild what it keeps from the conversations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.api.http import json_response
from gateway.api.serialize import event_json
from gateway.api.visibility import visible_to
from gateway.appkeys import RUNTIME, STOPPING
from gateway.directory import AgentInfo
from gateway.errors import InvalidInput
from gateway.model import Event
from gateway.store.base import Store

routes = web.RouteTableDef()

NOT_ISSUED = "after is not a cursor this gateway issued"
RENDER_CHUNK = 100
"""Events rendered to JSON between two yields to the event loop. A full page (1,000 events)
takes 30 ms or more of CPU in one go: a few integrators reading the log from its start held
every other request of the node (health checks included) for hundreds of milliseconds."""


async def after_cursor(request: web.Request, store: Store) -> str | None:
    """The `after` query parameter: absent or empty is the start of the log; anything else must
    be a cursor the log handed out (a made-up one past the newest event would be echoed back
    and silently skip every later event), else a 400."""
    after = request.query.get("after") or None
    if after is not None and not await store.cursor_issued(after):
        raise InvalidInput(NOT_ISSUED)
    return after


def _number(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be a number between {low} and {high}")
    return int(raw)


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    reader = runtime.auth.reader(request)
    limit = _number(request, "limit", 500, 1, 1000)
    wait = _number(request, "wait", 0, 0, 60)
    after = await after_cursor(request, runtime.store)
    accept = visible_to(reader) if isinstance(reader, AgentInfo) else None
    try:
        page, cursor = await _page(
            runtime.store, after, limit, float(wait), accept, request.app[STOPPING]
        )
    except ValueError:
        raise InvalidInput(NOT_ISSUED) from None
    # Read after the page: a pass of retention in between shows as a gap that may not be one
    # for this page, never the reverse.
    gap = await runtime.store.events_missed(after)
    now = runtime.clock.now()
    body = []
    for start in range(0, len(page), RENDER_CHUNK):
        if start:
            await asyncio.sleep(0)  # let other requests run between chunks
        body += [event_json(e, now, runtime.adapters) for e in page[start : start + RENDER_CHUNK]]
    return json_response({"events": body, "cursor": cursor, "gap": gap})


async def _page(
    store: Store,
    after: str | None,
    limit: int,
    wait: float,
    accept: Callable[[Event], bool] | None,
    stopping: asyncio.Event,
) -> tuple[list[Event], str | None]:
    """Up to `limit` events after `after` that `accept` lets through, and the cursor of the
    last event scanned. Long-polling keeps waiting (up to `wait` seconds in all) while only
    events the reader may not see arrive, and no longer than the node runs: a node stopping
    answers its long polls at once (an empty page), instead of holding the shutdown for up to
    a minute (README audit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    cursor = after
    while True:
        if wait:
            left = max(0.0, deadline - loop.time())
            scanned = (await _wait_unless(store.wait_events(cursor, left), stopping))[:limit]
        else:
            scanned = await store.read_events(cursor, limit)
        if scanned:
            cursor = scanned[-1].cursor
        page = scanned if accept is None else [e for e in scanned if accept(e)]
        if page or not scanned:
            return page, cursor
        if not wait or loop.time() >= deadline or stopping.is_set():
            return page, cursor


async def _wait_unless(waiting: Awaitable[list[Event]], stopping: asyncio.Event) -> list[Event]:
    """What `waiting` gives, or nothing as soon as `stopping` is set."""
    waiter = asyncio.ensure_future(waiting)
    if stopping.is_set():
        waiter.cancel()
    else:
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if waiter.done():
            return waiter.result()
        waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    return []
