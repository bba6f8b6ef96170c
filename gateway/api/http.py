"""HTTP plumbing shared by every handler: request ids, JSON errors, JSON bodies, agent auth.

Every failure leaves as `{"error": {"code", "message"}}` with a fitting status and one log line;
an unexpected exception is a 500 with no internals in the body. Secrets and message bodies are
never logged here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web

from gateway.appkeys import RUNTIME
from gateway.bodies import BodyTimeout, read_within
from gateway.directory import AgentInfo, IntegratorInfo
from gateway.errors import HTTP_STATUS, GatewayError, InvalidInput

log = structlog.get_logger("gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
# Request ids only correlate log lines: a random per-process prefix and a counter are unique
# enough and cost nothing, where a ULID per request was measurable on the webhook path.
_REQUEST_PREFIX = f"r{os.urandom(6).hex()}-"
_request_numbers = itertools.count(1)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status)


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _encoded_body(request: web.Request) -> bool:
    """Whether the body comes compressed. No provider or browser compresses what it posts,
    and inflating on the event loop lets a small gzip bomb (1 MB in, 1 GB out) hold every
    request for seconds, so the server does not decompress (`auto_decompress=False`) and such
    a body is refused unread."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    return encoding not in ("", "identity")


DECLARED_OVERSIZE = "payload_too_large"


def _refuse_declared_oversize(request: web.Request) -> None:
    """A body declared (Content-Length) larger than `server.max_body_bytes` is refused before
    a byte of it is read: waiting for it held the connection until the body time-out (30 s,
    then a 408) when the client sent less than it declared (ops audit)."""
    declared = request.content_length
    runtime = request.app.get(RUNTIME)
    if declared is None or runtime is None:
        return
    limit = runtime.config.server.max_body_bytes
    if declared > limit:
        request.content.feed_eof()  # or aiohttp lingers for the rest after the answer
        raise GatewayError(
            f"the body declares {declared} bytes; at most {limit} are taken",
            code=DECLARED_OVERSIZE,
        )


def _count_refused_webhook(request: web.Request, status: int) -> None:
    """A webhook refused here, before its handler (which counts the others): counted too, for
    a channel this gateway has (a made-up name would add a series per name)."""
    channel = request.match_info.get("channel")
    if not channel or not request.path.startswith("/webhooks/"):
        return
    runtime = request.app.get(RUNTIME)
    if runtime is not None and channel in runtime.adapters:
        runtime.metrics.count_webhook(channel, f"http_{status}")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line and turn every failure into a JSON error."""
    given = request.headers.get(REQUEST_ID_HEADER)
    request_id = given[:64] if given else f"{_REQUEST_PREFIX}{next(_request_numbers)}"
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        _refuse_declared_oversize(request)
        if request.body_exists and _encoded_body(request):
            raise InvalidInput(
                "a request body is taken as sent, without a Content-Encoding (gzip, deflate)",
                code="unsupported_media_type",
            )
        response = await handler(request)
    except GatewayError as exc:
        status = HTTP_STATUS.get(exc.code, 400)
        log.info(
            "http.refused",
            method=request.method,
            path=request.path,
            status=status,
            code=exc.code,
            reason=_logged_reason(exc.message or exc.code),
        )
        response = error_response(status, exc.code, exc.message or exc.code)
        if isinstance(exc, BodyTimeout) or exc.code in (
            "unsupported_media_type",
            DECLARED_OVERSIZE,
        ):
            response.force_close()  # the rest of the body may still come: end the connection
        if exc.code in ("unsupported_media_type", DECLARED_OVERSIZE):
            _count_refused_webhook(request, status)
    except web.RequestPayloadError as exc:
        # The body could not be read as sent (a chunked body cut short, a malformed chunk).
        # The client's fault, and nothing was read, so nothing stored.
        log.info(
            "http.refused", method=request.method, path=request.path, status=400, reason=str(exc)
        )
        response = error_response(400, "invalid_request", f"the body could not be read: {exc}")
        # Nothing more of it can be read: say so, or aiohttp tries to drain the rest after our
        # answer, fails the same way and logs that as an unhandled exception. The connection
        # cannot carry another request either (where would it start?): close it.
        request.content.feed_eof()
        response.force_close()
    except ConnectionResetError:
        # The client went away while its body was being read: nobody to answer, nothing was
        # stored. Its fault or the network's, not ours: one line, no traceback.
        log.info("http.client_disconnected", method=request.method, path=request.path)
        response = error_response(400, "invalid_request", "the connection was lost")
        response.force_close()
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        log.info(
            "http.refused",
            method=request.method,
            path=request.path,
            status=exc.status,
            code=code,
            reason=exc.reason,
        )
        response = error_response(exc.status, code, exc.reason)
        allowed = exc.headers.get(hdrs.ALLOW)
        if allowed is not None:  # a 405 says what the resource takes (RFC 9110 15.5.6)
            response.headers[hdrs.ALLOW] = allowed
    except Exception:
        log.exception("http.internal_error", method=request.method, path=request.path)
        response = error_response(500, "internal_error", "internal error; see the gateway log")
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


LOGGED_REASON_CHARS = 300
"""How much of a refusal's message its log line keeps: what the client was told, which can
quote what it sent (cut, so a client cannot make every line it causes long)."""


def _logged_reason(message: str) -> str:
    if len(message) <= LOGGED_REASON_CHARS:
        return message
    return message[:LOGGED_REASON_CHARS] + "…"


async def read_json(request: web.Request) -> dict[str, Any]:
    """Parse a JSON object body; anything else is a 400 that names the problem."""
    body = await read_within(request, request.read())
    if not body:
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    return data


def token_digest(token: str) -> str:
    # A header that was not UTF-8 arrives with lone surrogates in it: hash what was sent
    # (it matches no token) rather than fail to encode it.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Authenticator:
    """Maps presented bearer tokens to agents (or integrators) by their SHA-256: the config
    stores only that. Integrator tokens open the event log and nothing else."""

    def __init__(
        self,
        digests: Mapping[str, str],
        agents: Mapping[str, AgentInfo],
        integrators: Mapping[str, str] | None = None,
    ) -> None:
        self._by_digest = dict(digests)
        self._agents = agents
        self._integrators = dict(integrators or {})

    def agent(self, request: web.Request, *, allow_query: bool = False) -> AgentInfo:
        digest = token_digest(self._token(request, allow_query))
        agent_id = self._by_digest.get(digest)
        agent = self._agents.get(agent_id) if agent_id else None
        if agent is None:
            if digest in self._integrators:  # a valid token, of the wrong kind
                raise GatewayError(
                    "an integrator token reads GET /api/v1/events only", code="forbidden"
                )
            raise GatewayError("the token is not valid", code="unauthorized")
        structlog.contextvars.bind_contextvars(agent=agent.id)
        return agent

    def reader(self, request: web.Request) -> AgentInfo | IntegratorInfo:
        """Who reads the event log: an integrator (every event) or an agent (their own)."""
        name = self._integrators.get(token_digest(self._token(request, False)))
        if name is None:
            return self.agent(request)
        structlog.contextvars.bind_contextvars(integrator=name)
        return IntegratorInfo(name)

    def known(self, request: web.Request) -> bool:
        """Whether the request carries any valid agent or integrator token (never raises)."""
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return False
        digest = token_digest(header[7:].strip())
        return digest in self._by_digest or digest in self._integrators

    @staticmethod
    def _token(request: web.Request, allow_query: bool) -> str:
        token = None
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif allow_query:
            token = request.query.get("access_token")
        if not token:
            raise GatewayError("a bearer token is required", code="unauthorized")
        return token
