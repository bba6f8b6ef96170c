"""`/webhooks/{channel}`: hands provider requests to the named channel's adapter.

The adapter verifies the signature before anything else and answers only after ingest
committed; this module only finds the adapter and counts outcomes for /metrics.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.appkeys import RUNTIME
from gateway.errors import HTTP_STATUS, GatewayError, NotFound

log = structlog.get_logger("gateway.webhooks")

routes = web.RouteTableDef()


class AdapterFailed(GatewayError):
    """A channel adapter raised while handling a webhook (not one of our errors)."""

    code = "adapter_error"


async def _dispatch(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    name = request.match_info["channel"]
    adapter = runtime.adapters.get(name)
    if adapter is None:
        raise NotFound(f"no channel named {name!r}")
    structlog.contextvars.bind_contextvars(channel=name)
    try:
        response = await adapter.handle_webhook(request)
    except GatewayError as exc:  # answered as a 4xx or 503 by the middleware: counted so
        runtime.metrics.count_webhook(name, f"http_{HTTP_STATUS.get(exc.code, 400)}")
        raise
    except web.HTTPException as exc:  # a channel that takes no webhooks (web chat): 404
        runtime.metrics.count_webhook(name, f"http_{exc.status}")
        raise
    except Exception:
        # A bug of the channel's plugin: the provider gets the documented `adapter_error`
        # (a 500, so it retries once the plugin is fixed), and ops the traceback.
        runtime.metrics.count_webhook(name, "error")
        log.exception("webhook.adapter_failed", channel=name)
        raise AdapterFailed(
            f"channel {name!r} failed to handle the webhook; see the gateway log"
        ) from None
    if not isinstance(response, web.StreamResponse):  # the plugin broke the adapter contract
        runtime.metrics.count_webhook(name, "error")
        log.error("webhook.adapter_failed", channel=name, answered=type(response).__name__)
        raise AdapterFailed(
            f"channel {name!r} answered the webhook with no HTTP response; see the gateway log"
        )
    outcome = "ok" if response.status < 400 else f"http_{response.status}"
    runtime.metrics.count_webhook(name, outcome)
    return response


# With a trailing slash too: ops paste URLs into provider consoles as they like, and a
# provider posting to the other form would lose every webhook to a 404. Signatures cover the
# path as the provider called it, so both forms verify.
for _path in ("/webhooks/{channel}", "/webhooks/{channel}/"):
    routes.route("POST", _path)(_dispatch)
    routes.route("GET", _path)(_dispatch)
