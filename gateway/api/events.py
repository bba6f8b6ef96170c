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

routes = web.RouteTableDef()


def _number(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be a number between {low} and {high}")
    return int(raw)


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    runtime.auth.agent(request)
    after = request.query.get("after") or None
    limit = _number(request, "limit", 500, 1, 1000)
    wait = _number(request, "wait", 0, 0, 60)
    try:
        if wait:
            page = (await runtime.store.wait_events(after, float(wait)))[:limit]
        else:
            page = await runtime.store.read_events(after, limit)
    except ValueError:
        raise InvalidInput("after is not a cursor this gateway issued") from None
    now = runtime.clock.now()
    body = [event_json(e, now) for e in page]
    next_cursor = page[-1].cursor if page else after
    return json_response({"events": body, "cursor": next_cursor})
