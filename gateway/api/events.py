"""`GET /api/v1/events?after=CURSOR`: the ordered, resumable normalized event stream.

Integrators page through the log with the cursor of the last event they processed; `wait=N`
long-polls up to N seconds for the first new event. A cursor never repeats or skips an event
because the log is append-only and cursors follow commit order.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.http import json_response
from gateway.api.serialize import event_json
from gateway.appkeys import RUNTIME
from gateway.errors import InvalidInput
from gateway.store.base import Store

routes = web.RouteTableDef()

NOT_ISSUED = "after is not a cursor this gateway issued"


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
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be a number between {low} and {high}")
    return int(raw)


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.auth.agent(request)
    limit = _number(request, "limit", 500, 1, 1000)
    wait = _number(request, "wait", 0, 0, 60)
    after = await after_cursor(request, runtime.store)
    try:
        if wait:
            page = (await runtime.store.wait_events(after, float(wait)))[:limit]
        else:
            page = await runtime.store.read_events(after, limit)
    except ValueError:
        raise InvalidInput(NOT_ISSUED) from None
    now = runtime.clock.now()
    body = [event_json(e, now) for e in page]
    next_cursor = page[-1].cursor if page else after
    return json_response({"events": body, "cursor": next_cursor})
