"""The web chat channel: visitor sessions, the visitor WebSocket, the widget and a demo page.

Wire protocol (DESIGN section 5):

- `POST /webchat/{channel}/session` `{"display_name": "Ana"}` or `{"token": "..."}` ->
  `201 {"token", "visitor_id"}`.
- `GET /webchat/{channel}/ws?token=...[&after=MESSAGE_ID]`; the visitor sends
  `{"type": "message", "text", "client_id"}` and gets `{"type": "ack", "client_id", "message"}`;
  agent replies arrive as `{"type": "message", "message"}`. With `after`, everything since that
  message is replayed first, in order (`after=0`: the whole history); an `after` that is not
  one of the visitor's own message ids is a 400 before the upgrade. Without `after` (a widget
  that keeps no position), the agent replies that never reached any of the visitor's sockets
  (still `queued` or `sent`) are replayed first, in order: what they missed while away.
- Read receipts (an extension): `{"type": "read", "message_id"}` on the socket, or
  `POST /webchat/{channel}/read` `{"message_id"}` (204), says the visitor was shown that agent
  reply; it moves to `read` for the agent. The widget sends one per reply shown while its panel
  is open and the page visible. A widget that sends none leaves replies at `delivered`.

A visitor message's provider id is `visitor_id:client_id`, so a resend after a lost ack is the
same message (the store deduplicates it). Agent replies reach the visitor through the event
feed, so the visitor's socket may live on any node; pushing one marks it `delivered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.bodies import read_within
from gateway.channels import BaseAdapter, ChannelContext, SendResult
from gateway.connlimit import ConnectionCounter
from gateway.errors import (
    InvalidInput,
    PermanentChannelError,
    StoreUnavailable,
    VersionConflict,
)
from gateway.ids import new_id
from gateway.keylocks import KeyedLocks
from gateway.model import (
    Contact,
    Conversation,
    DeliveryState,
    DeliveryStatus,
    Direction,
    Event,
    InboundMessage,
    Message,
    State,
    iso,
)
from gateway.sink import shown_text
from gateway.store.base import IngestResult
from gateway.wsdrop import ClientNotReading, Sender
from plugins.webchat.config import WebchatConfig
from plugins.webchat.tokens import InvalidToken, TokenSigner, VisitorSession

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEARTBEAT = 25.0
MAX_NAME = 80
MAX_CLIENT_ID = 100
CORS_HEADERS = "Authorization, Content-Type"
TYPING_RATE = "20/minute"
"""Typing indicators a visitor may send (more are dropped silently: nothing is lost)."""
READ_RATE = "120/minute"
"""Read receipts a visitor may send for replies not read yet (more are dropped silently: the
next one covers them, since a receipt means read up to that reply)."""
READ_BACK = 200
"""How many messages before a read one a receipt also covers (read up to it)."""
NOT_YOURS = "no agent message of this chat has this message_id"
WHOLE_HISTORY = "0"
"""`after=0`: every message of the visitor (read from the first: see `_from`)."""
REPLAY_PAGE = 1000
"""Messages read per store call when replaying a visitor's history (all pages are sent)."""


def _from(after: str | None) -> str | None:
    """The store's `after` for a visitor's: a message of theirs, or None for `0` (from the
    first; the store lists messages in the order they were stored, not by id)."""
    return None if after == WHOLE_HISTORY else after


def visitor_message_json(message: Message) -> dict[str, Any]:
    """What a visitor may see of a message: no internal ids, agents or raw payloads."""
    return {
        "id": message.id,
        "direction": str(message.direction),
        "kind": message.kind,
        "text": message.text,
        "sent_at": iso(message.sent_at),
        "received_at": iso(message.received_at),
        "provider_message_id": message.provider_message_id,
        "client_id": message.client_id,
        "status": str(message.status) if message.status else None,
        "attachments": [
            {"kind": a.kind, "url": a.url, "mime_type": a.mime_type, "filename": a.filename}
            for a in message.attachments
        ],
    }


def _undelivered(message: Message) -> bool:
    """An agent reply that has not reached any socket of the visitor yet."""
    return message.direction == Direction.OUT and message.status in (
        DeliveryState.QUEUED,
        DeliveryState.SENT,
    )


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


def _error_code(response: web.StreamResponse) -> str | None:
    """The `error.code` of one of our JSON error answers (None for anything else)."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        code = orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


UNAVAILABLE_MESSAGE = "the store is unavailable; retry (with the same client_id)"


CLIENT_ID_REUSED = "this client_id already stands for another message: give each message its own"


def _reused(duplicate: bool, stored: Message, sent: InboundMessage) -> bool:
    """A resend (same client_id) with another text is not a resend but a different message
    under a used id: it must not be acknowledged as if it had been stored."""
    return duplicate and stored.text != shown_text(sent.text or "")


def _named_client_id(frame: Any) -> str | None:
    """The `client_id` a refused message frame names, when it is one a widget could have
    sent (a string of at most MAX_CLIENT_ID characters)."""
    if not isinstance(frame, dict) or frame.get("type") != "message":
        return None
    client_id = frame.get("client_id")
    if isinstance(client_id, str) and 0 < len(client_id) <= MAX_CLIENT_ID:
        return client_id
    return None


async def _send_error(
    ws: web.WebSocketResponse,
    code: str,
    message: str,
    client_id: str | None = None,
    **details: Any,
) -> None:
    """An `error` frame: the code, a sentence for people, and the client_id it is about."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if client_id is not None:
        frame["client_id"] = client_id
    await ws.send_str(orjson.dumps({**frame, **details}).decode())


def _rate_limited(retry_after: float) -> web.Response:
    """429 with the wait in `Retry-After` and in the error's `retry_after` (seconds, as the
    socket's error frame has it), and in the message."""
    seconds = round(retry_after)
    message = f"too many requests; retry in {seconds} s"
    response = _json(
        {"error": {"code": "rate_limited", "message": message, "retry_after": seconds}}, 429
    )
    response.headers["Retry-After"] = str(seconds)
    return response


ACK_WAIT = 5.0
"""How long an ack waits for the socket's pushes to reach its message (seconds); past that
(the node's event feed is behind: a store outage) it goes anyway, and says so in the log."""


class _WrittenHere:
    """What a visitor wrote through one socket, and how far that socket's pushes have got.

    Such a message is acked here, and pushed only to the visitor's other sockets (another
    tab). The socket's frames follow the stored order, acks included: the ack goes once the
    pushes reach its event (everything stored before it has been pushed by then), and the
    pushes wait there until the ack went (nothing stored after it goes first). A widget that
    resumes after the last message it got then misses nothing and gets nothing twice.
    """

    def __init__(self) -> None:
        self._client_ids: set[str] = set()
        self._reached: dict[str, asyncio.Future[None]] = {}
        self._settled: dict[str, asyncio.Future[None]] = {}
        self.replayed = asyncio.Event()
        """Set once the socket's replay is done and it pushes live."""

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._client_ids

    def add(self, client_id: str) -> None:
        """Before the message is stored: its event may come before the store's answer."""
        self._client_ids.add(client_id)
        loop = asyncio.get_running_loop()
        if client_id not in self._reached:
            self._reached[client_id] = loop.create_future()
        if client_id not in self._settled:
            self._settled[client_id] = loop.create_future()

    def reached(self, client_id: str | None) -> None:
        """The pushes got to this message: everything stored before it went out."""
        waiter = self._reached.get(client_id or "")
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pushed_up_to(self, client_id: str, *, duplicate: bool) -> bool:
        """Wait until the ack of `client_id` may go (False: it waited ACK_WAIT in vain)."""
        waiter = self._reached.get(client_id)
        try:
            async with asyncio.timeout(ACK_WAIT):
                if duplicate or waiter is None:
                    await self.replayed.wait()
                else:
                    await waiter
        except TimeoutError:
            return False
        finally:
            self._reached.pop(client_id, None)
        return True

    def settle(self, client_id: str, *, stored: bool) -> None:
        """The socket answered this message (its ack, or why not): pushes may go on. A message
        not newly stored has no event to wait at, so nothing is kept for it."""
        waiter = self._settled.get(client_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not stored:
            self._settled.pop(client_id, None)
            self._reached.pop(client_id, None)

    async def answered(self, client_id: str) -> None:
        """At this message's event: wait until the socket answered it (at most ACK_WAIT; past
        that the store's answer is lost in an outage, and the pushes must not stop)."""
        waiter = self._settled.get(client_id)
        try:
            if waiter is not None and not waiter.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ACK_WAIT):
                        await asyncio.shield(waiter)
        finally:
            if self._settled.get(client_id) is waiter:
                self._settled.pop(client_id, None)


def _conversation_frame(state: State, change: str | None) -> str:
    """Where the visitor's chat stands: sent live as it changes (`change` says why), and once
    on connecting (`change` null)."""
    return orjson.dumps({"type": "conversation", "state": str(state), "change": change}).decode()


def _socket_frame_limit(max_text: int) -> int:
    """The largest frame a visitor's socket takes: a message of `max_text` characters however
    it is written (JSON may escape a character outside the BMP as 12 bytes, two `\\uXXXX`),
    with room for the rest of the frame; never under 64 KiB."""
    return max(64 * 1024, 12 * max_text + 4096)


DEMO_HEADERS = {
    # The page shows the widget, and the widget shows agents' text: the usual hardening of a
    # page of our own (nothing from elsewhere, not framed by another site, types as declared).
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _too_many(who: str, cap: int | None) -> web.Response:
    """429 for a socket past a cap (see `gateway.connlimit`): close one first."""
    return _error(
        429,
        "too_many_connections",
        f"{who} already has {cap} open chat sockets on this server: close one first",
    )


def _static(name: str) -> bytes:
    return resources.files("plugins.webchat").joinpath("static", name).read_bytes()


class WebchatAdapter(BaseAdapter):
    channel_type = "webchat"
    provider = "webchat"
    supports_templates = False

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        assert isinstance(context.config, WebchatConfig)
        self.config: WebchatConfig = context.config
        self._signer: TokenSigner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._deliveries: set[asyncio.Task[Any]] = set()
        """Delivery writes that outlived their socket (see `_record_delivery`)."""
        self._storing: KeyedLocks[str] = KeyedLocks()
        """Visitor messages being limited and stored, by provider id (see `_limited_store`)."""
        self.sockets_per_visitor = ConnectionCounter(self.config.max_sockets_per_visitor)
        """Open sockets per visitor id on this node (see `gateway.connlimit`)."""
        self.sockets_per_address = ConnectionCounter(self.config.max_sockets_per_address)
        """Open sockets per client address on this node."""
        own = urlsplit(context.public_url)
        self._own_origin = f"{own.scheme}://{own.netloc}"

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        secret = self.config.secret.get_secret_value() if self.config.secret else None
        if secret is None:
            key = f"webchat:{self.name}:secret"
            # Generated once for the whole cluster; compare-and-set keeps nodes in agreement.
            await self.context.kv.kv_compare_set(key, None, secrets.token_urlsafe(32))
            secret = await self.context.kv.kv_get(key)
            assert secret is not None
        self._signer = TokenSigner(secret, self.name, self.config.token_ttl)

    async def close_connections(self) -> None:
        """The node is shutting down: close every visitor socket with 1001 (going away) now,
        so widgets reconnect to another node at once instead of after the shutdown timeout."""
        for ws in tuple(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def stop(self) -> None:
        await self.close_connections()
        if self._deliveries:  # before the store closes (adapters stop first)
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            raise RuntimeError("the web chat channel has not started")
        return self._signer

    def routes(self) -> Sequence[web.RouteDef]:
        base = f"/webchat/{self.name}"
        logged = self._logged
        return [
            web.post(f"{base}/session", logged(self.session)),
            web.options(f"{base}/session", self._preflight("POST")),
            # WebSockets have no preflight: Origin is checked
            web.get(f"{base}/ws", logged(self.socket)),
            web.post(f"{base}/messages", logged(self.post_message)),
            web.get(f"{base}/messages", logged(self.get_messages)),
            web.options(f"{base}/messages", self._preflight("GET, POST")),
            web.post(f"{base}/read", logged(self.post_read)),
            web.options(f"{base}/read", self._preflight("POST")),
            web.get(f"{base}/demo", self.demo),
            web.get("/webchat/widget.js", self.widget),
        ]

    def _logged(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """One log line for every refusal (what the agent API does with `http.refused`). Rate
        limits and store outages have lines of their own; the query (a visitor token on the
        socket) is never logged."""

        async def handle(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            if response.status >= 400 and response.status not in (429, 503):
                self.context.log.info(
                    "webchat.refused",
                    channel=self.name,
                    method=request.method,
                    path=request.path,
                    status=response.status,
                    code=_error_code(response),
                    peer=self.context.client_address(request),
                )
            return response

        return handle

    # origins -----------------------------------------------------------------------------------
    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser page (curl, a server-side integration)
        allowed = self.config.allowed_origins
        own = {self._own_origin, f"{request.scheme}://{request.host}"}
        return origin in own or "*" in allowed or origin in allowed

    def _cors(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Let an allowed page read the response (errors too, so it can tell a 401 from a 400)."""
        origin = request.headers.get("Origin")
        if origin and self._origin_allowed(request):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            # Without this a page's script cannot read them: how long to wait after a 429, and
            # the id its request is logged under.
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"
        return response

    def _preflight(self, methods: str) -> Handler:
        """The CORS preflight of an endpoint a page calls with `methods`: the visitor token
        travels as `Authorization: Bearer`, bodies as JSON (`Content-Type`)."""

        async def preflight(request: web.Request) -> web.StreamResponse:
            if not self._origin_allowed(request):
                return _error(403, "origin_not_allowed", "this site may not use this chat")
            response = self._cors(request, web.Response(status=204))
            if request.headers.get("Origin"):
                response.headers["Access-Control-Allow-Methods"] = f"{methods}, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
            return response

        return preflight

    # session -----------------------------------------------------------------------------------
    async def session(self, request: web.Request) -> web.StreamResponse:
        """Open a visitor session, or resume one from its token (new token, same visitor)."""
        if not self._origin_allowed(request):
            self.context.log.info("webchat.origin_refused", origin=request.headers.get("Origin"))
            # Readable by the refused page (the widget posts without a preflight), so the
            # widget can say the chat is not for this site instead of retrying for ever. It
            # says nothing a direct request would not, and grants no access.
            refusal = _error(403, "origin_not_allowed", "this site may not use this chat")
            origin = request.headers.get("Origin")
            if origin:
                refusal.headers["Access-Control-Allow-Origin"] = origin
                refusal.headers["Vary"] = "Origin"
            return refusal
        address = self.context.client_address(request)
        retry_after = await self.context.limiter.hit(
            self.config.session_rate_limit, f"webchat:{self.name}:session", address
        )
        if retry_after is not None:
            self.context.log.info(
                "webchat.rate_limited", limit="session", client=address, retry_after=retry_after
            )
            return self._cors(request, _rate_limited(retry_after))
        try:
            body = orjson.loads(await read_within(request, request.read()) or b"{}")
        except orjson.JSONDecodeError:
            return self._cors(request, _error(400, "invalid_json", "the body is not valid JSON"))
        if not isinstance(body, dict):
            return self._cors(request, _error(400, "invalid_request", "expected a JSON object"))
        token = body.get("token")
        if token is not None:
            if not isinstance(token, str):
                return self._cors(request, _error(400, "invalid_request", "token must be a string"))
            try:
                session = self.signer.verify(token)
            except InvalidToken as exc:
                return self._cors(request, _error(401, "invalid_token", str(exc)))
        else:
            name = body.get("display_name")
            if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME):
                return self._cors(
                    request,
                    _error(
                        400,
                        "invalid_request",
                        f"display_name must be text of at most {MAX_NAME} characters",
                    ),
                )
            session = VisitorSession(self.name, new_id("v"), (name or "").strip() or None)
        fresh = self.signer.issue(session)
        return self._cors(request, _json({"token": fresh, "visitor_id": session.visitor_id}, 201))

    # plain HTTP for clients without WebSockets (curl, server-side integrations) ----------------
    def _bearer_session(self, request: web.Request) -> VisitorSession:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return self.signer.verify(token)

    async def _visitor_post(
        self, request: web.Request
    ) -> tuple[VisitorSession, Any] | web.StreamResponse:
        """A visitor's POST: (their session, the JSON body), or the refusal to answer with
        (another site, a bad token, a body that is not JSON)."""
        if not self._origin_allowed(request):
            return _error(403, "origin_not_allowed", "this site may not use this chat")
        try:
            session = self._bearer_session(request)
        except InvalidToken as exc:
            return self._cors(request, _error(401, "invalid_token", str(exc)))
        try:
            return session, orjson.loads(await read_within(request, request.read()) or b"{}")
        except orjson.JSONDecodeError:
            return self._cors(request, _error(400, "invalid_json", "the body is not valid JSON"))

    async def post_message(self, request: web.Request) -> web.StreamResponse:
        """`POST /webchat/{channel}/messages` with the visitor token as bearer: the same as a
        socket `message` frame, answered with the ack (201)."""
        posted = await self._visitor_post(request)
        if isinstance(posted, web.StreamResponse):
            return posted
        session, frame = posted
        try:
            if isinstance(frame, dict):
                frame.setdefault("type", "message")
            message = self._parse_frame(frame, session)
        except InvalidInput as exc:
            return self._cors(request, _error(400, "invalid_request", str(exc)))
        if message is None:
            return self._cors(request, _error(400, "invalid_request", "type must be 'message'"))
        try:
            retry_after, result = await self._limited_store(session, message)
        except StoreUnavailable as exc:
            return self._cors(request, self._unavailable(exc))
        except VersionConflict as exc:  # busy chat: nothing stored, the visitor sends again
            return self._cors(request, _error(409, "conflict", str(exc)))
        if result is None:
            return self._cors(request, _rate_limited(retry_after or 1))
        if _reused(result.duplicate, result.message, message):
            return self._cors(request, _error(422, "client_id_reused", CLIENT_ID_REUSED))
        body = {
            "type": "ack",
            "client_id": message.extra["client_id"],
            "message": visitor_message_json(result.message),
        }
        return self._cors(request, _json(body, 201))

    async def post_read(self, request: web.Request) -> web.StreamResponse:
        """`POST /webchat/{channel}/read` `{"message_id"}` with the visitor token as bearer:
        the same as a socket `read` frame, answered 204."""
        posted = await self._visitor_post(request)
        if isinstance(posted, web.StreamResponse):
            return posted
        session, frame = posted
        try:
            refused = await self._visitor_read(session, frame)
        except StoreUnavailable as exc:
            return self._cors(request, self._unavailable(exc))
        if refused is not None:
            return self._cors(request, _error(400, "invalid_request", refused))
        return self._cors(request, web.Response(status=204))

    async def _visitor_read(self, session: VisitorSession, frame: Any) -> str | None:
        """The visitor was shown an agent reply (`{"type": "read", "message_id"}`): it moves
        to `read`, which its agent sees on the stream as for a WhatsApp read report. Returns
        why the receipt was refused, None when it was taken (or dropped over READ_RATE)."""
        message_id = frame.get("message_id") if isinstance(frame, dict) else None
        if not isinstance(message_id, str) or not 1 <= len(message_id) <= MAX_CLIENT_ID:
            return "message_id is required: the id of an agent reply you were shown"
        message = await self.context.history.get_message(message_id)
        if (
            message is None
            or message.channel != self.name
            or message.direction != Direction.OUT
            or message.contact is None
            or message.contact.address != session.visitor_id
        ):
            return NOT_YOURS  # the same words for another visitor's reply: no probing ids
        if message.status == DeliveryState.READ:
            return None  # said already (another tab): costs nothing, counts nothing
        over = await self.context.limiter.hit(
            READ_RATE, f"webchat:{self.name}:read", session.visitor_id
        )
        if over is not None:
            return None  # dropped: the next receipt covers it (read up to, below)
        # Read up to it, as WhatsApp's receipts mean: the replies before it that are not read
        # yet were shown too (their own receipts may have been dropped over READ_RATE).
        earlier = await self.context.history.list_recent_messages(
            message.conversation_id, before=message.id, limit=READ_BACK
        )
        unread = [
            m
            for m in (*earlier, message)
            if m.direction == Direction.OUT
            and m.status not in (DeliveryState.READ, DeliveryState.FAILED)
        ]
        # Side by side: their writes share group commits (pipelines on Redis).
        await asyncio.gather(
            *(self.context.inbound.status(self._report(m, DeliveryState.READ)) for m in unread)
        )
        return None

    async def get_messages(self, request: web.Request) -> web.StreamResponse:
        """`GET /webchat/{channel}/messages[?after=ID]`: the visitor's history, in order."""
        if not self._origin_allowed(request):
            return _error(403, "origin_not_allowed", "this site may not use this chat")
        try:
            session = self._bearer_session(request)
        except InvalidToken as exc:
            return self._cors(request, _error(401, "invalid_token", str(exc)))
        try:
            after = await self._after(request, session)
            history = await self.context.history.list_contact_messages(
                self.name, session.visitor_id, after=_from(after), limit=REPLAY_PAGE + 1
            )
        except InvalidInput as exc:
            return self._cors(request, _error(400, "invalid_request", str(exc)))
        except StoreUnavailable as exc:
            return self._cors(request, self._unavailable(exc))
        page = history[:REPLAY_PAGE]
        shown = [visitor_message_json(m) for m in page]
        # A reply handed to the visitor here is delivered, as one pushed over a socket is:
        # the agent sees it so, and a socket opened later without `after` does not replay it.
        undelivered = [i for i, message in enumerate(page) if _undelivered(message)]
        try:  # side by side: their writes share group commits
            await asyncio.gather(*(self._record_delivery(page[i]) for i in undelivered))
        except StoreUnavailable as exc:
            return self._cors(request, self._unavailable(exc))
        for i in undelivered:
            shown[i]["status"] = str(DeliveryState.DELIVERED)
        # More after these: ask again with `after=` the last of them. On the last page, where
        # the chat stands now (null before the visitor's first message).
        more = len(history) > REPLAY_PAGE
        body: dict[str, Any] = {"messages": shown, "has_more": more}
        if not more:
            try:
                state = await self._state_of(page[-1].id if page else _from(after))
            except StoreUnavailable as exc:
                return self._cors(request, self._unavailable(exc))
            body["conversation"] = None if state is None else {"state": str(state)}
        return self._cors(request, _json(body))

    async def _limited_store(
        self, session: VisitorSession, message: InboundMessage
    ) -> tuple[float | None, IngestResult | None]:
        """Count a visitor message against the rate, then store it: (None, what ingest
        answered), or (the wait, None) when over the rate. One client_id at a time on this
        node: copies sent at once (a client retrying while its first request is still in
        flight) wait for the first, then pass as resends; each used up the rate (re-audit:
        four copies at once, one message stored, and the visitor's next ones refused)."""
        async with self._storing.hold(message.provider_message_id):
            retry_after = await self._message_limit(session, message)
            if retry_after is not None:
                return retry_after, None
            return None, await self.context.inbound.message(message)

    async def _message_limit(
        self, session: VisitorSession, message: InboundMessage
    ) -> float | None:
        """Count a visitor message against `message_rate_limit`: the wait if over it. A resend
        of a message already stored is neither counted nor refused: it stores nothing, and its
        ack may be what the visitor lost (a widget resending what was unanswered after a
        flaky reconnect used up the visitor's minute without storing a thing)."""
        if self.config.message_rate_limit is None or await self._stored(message):
            return None
        retry_after = await self.context.limiter.hit(
            self.config.message_rate_limit, f"webchat:{self.name}:message", session.visitor_id
        )
        if retry_after is not None:
            self.context.log.info(
                "webchat.rate_limited",
                limit="message",
                visitor=session.visitor_id,
                retry_after=retry_after,
            )
        return retry_after

    async def _stored(self, message: InboundMessage) -> bool:
        """Whether this visitor message is stored already (a resend); no on a store outage,
        where the limit then answers as for a new message."""
        try:
            found = await self.context.history.find_message(self.name, message.provider_message_id)
        except StoreUnavailable:
            return False
        return found is not None

    def _unavailable(self, exc: StoreUnavailable) -> web.Response:
        """503 for a request the store could not serve (one log line, no traceback)."""
        self.context.log.warning("webchat.store_unavailable", channel=self.name, error=str(exc))
        return _error(503, "store_unavailable", UNAVAILABLE_MESSAGE)

    async def _after(self, request: web.Request, session: VisitorSession) -> str | None:
        """The `after` query parameter: absent or empty is none, `0` is the whole history (lower
        than every id, what the widget asks on a page load), anything else must be the id of one
        of this visitor's own messages."""
        after = request.query.get("after") or None
        if after is None or after == WHOLE_HISTORY:
            return after
        message = await self.context.history.get_message(after)
        if (
            message is None
            or message.channel != self.name
            or message.contact is None
            or message.contact.address != session.visitor_id
        ):
            raise InvalidInput("after is not the id of one of this visitor's messages")
        return after

    # socket ------------------------------------------------------------------------------------
    async def socket(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_allowed(request):
            self.context.log.info("webchat.origin_refused", origin=request.headers.get("Origin"))
            return _error(403, "origin_not_allowed", "this site may not use this chat")
        try:
            session = self.signer.verify(request.query.get("token", ""))
        except InvalidToken as exc:
            return _error(401, "invalid_token", str(exc))
        try:
            after = await self._after(request, session)  # refused before the upgrade
        except InvalidInput as exc:
            return _error(400, "invalid_request", str(exc))
        address = session.visitor_id
        client = self.context.client_address(request)
        over = None
        if not self.sockets_per_visitor.try_open(address):
            over = "visitor"
        elif not self.sockets_per_address.try_open(client):
            self.sockets_per_visitor.close(address)
            over = "address"
        if over is not None:
            self.context.log.warning(
                "webchat.too_many_connections",
                channel=self.name,
                per=over,
                visitor=address,
                peer=client,
            )
            cap = (
                self.sockets_per_visitor.cap if over == "visitor" else self.sockets_per_address.cap
            )
            return _too_many(f"this {over}", cap)
        try:
            return await self._serve_socket(request, session, after)
        finally:
            self.sockets_per_visitor.close(address)
            self.sockets_per_address.close(client)

    async def _serve_socket(
        self, request: web.Request, session: VisitorSession, after: str | None
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=_socket_frame_limit(self.config.max_text)
        )
        out = Sender(ws, request)
        await ws.prepare(request)
        self._sockets.add(ws)
        address = session.visitor_id

        def mine(event: Event) -> bool:
            message = event.message
            return (
                (
                    event.type in ("message.sent", "message.received")
                    and message is not None
                    and message.channel == self.name
                    and message.contact is not None
                    and message.contact.address == address
                )
                or (
                    event.type == "conversation.typing"
                    and event.change == "agent"
                    and event.conversation is not None
                    and event.conversation.channel == self.name
                    and event.conversation.contact.address == address
                )
                or (
                    event.type in ("conversation.updated", "conversation.created")
                    and event.conversation is not None
                    and event.conversation.channel == self.name
                    and event.conversation.contact.address == address
                )
            )

        subscription = self.context.events.subscribe(mine, key=(self.name, address))
        written_here = _WrittenHere()
        pump = asyncio.create_task(self._pump(out, subscription, session, after, written_here))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(ws, session, msg.data, written_here)
                elif msg.type == WSMsgType.BINARY:
                    self.context.log.info("webchat.bad_frame", visitor=session.visitor_id)
                    await _send_error(ws, "invalid_request", "frames are JSON text, not binary")
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            subscription.close()
            self._sockets.discard(ws)
        return ws

    async def _pump(
        self,
        out: Sender,
        subscription: Any,
        session: VisitorSession,
        after: str | None,
        written_here: _WrittenHere,
    ) -> None:
        """Push to the visitor until the socket ends. If the store fails meanwhile (replaying
        history, recording a delivery), close with 1013 (try again later): a socket that stays
        open but pushes nothing would look healthy to the widget; reconnecting replays. A
        visitor that stopped reading has its connection reset (`gateway.wsdrop`)."""
        try:
            await self._forward(out, subscription, session, after, written_here)
        except StoreUnavailable as exc:
            self.context.log.warning(
                "webchat.store_unavailable", channel=self.name, error=str(exc), during="push"
            )
            await out.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"store unavailable")
        except ClientNotReading as exc:
            self.context.log.warning(
                "webchat.client_not_reading",
                channel=self.name,
                visitor=session.visitor_id,
                error=str(exc),
            )

    async def _forward(
        self,
        out: Sender,
        subscription: Any,
        session: VisitorSession,
        after: str | None,
        written_here: _WrittenHere,
    ) -> None:
        """Replay what the visitor missed, then push agent replies, what the visitor wrote in
        another tab, and state changes live. What this socket's visitor wrote through it is
        not pushed back: reaching its event tells the ack it may go (`_WrittenHere`)."""
        sent_ids: set[str] = set()
        # With `after`, everything since it; without, the replies no socket of theirs got.
        undelivered_only = after is None
        cursor: str | None = WHOLE_HISTORY if after is None else after
        newest = _from(cursor)
        while cursor is not None:  # everything missed, however long: page after page
            history = await self.context.history.list_contact_messages(
                self.name, session.visitor_id, after=_from(cursor), limit=REPLAY_PAGE
            )
            for message in history:
                if undelivered_only and not _undelivered(message):
                    continue
                await self._push(out, message)
                sent_ids.add(message.id)
                if message.direction == Direction.IN:
                    written_here.reached(message.client_id)
            newest = history[-1].id if history else newest
            cursor = history[-1].id if len(history) == REPLAY_PAGE else None
        # Where the chat stands now, once: a widget that was away when it ended (no agent
        # came, the agent closed it) would otherwise never learn it (widget audit).
        state = await self._state_of(newest)
        if state is not None:
            await out.text(_conversation_frame(state, None))
        written_here.replayed.set()
        while True:
            event = await subscription.get()
            if event.type == "conversation.typing":
                await out.text(orjson.dumps({"type": "typing", "active": True}).decode())
                continue
            if event.type == "conversation.updated" and event.conversation is not None:
                await out.text(_conversation_frame(event.conversation.state, event.change))
                continue
            if event.type == "conversation.created" and event.conversation is not None:
                # A new chat after one that ended: without it a widget still took the chat for
                # closed, and did not say so when the new one was closed too (README audit).
                await out.text(_conversation_frame(event.conversation.state, "created"))
                continue
            message = event.message
            if message is None:
                continue
            if message.direction == Direction.IN and message.client_id in written_here:
                written_here.reached(message.client_id)  # this socket sent it: its ack says so
                await written_here.answered(message.client_id)  # and goes before what follows
                continue
            if message.id in sent_ids:
                continue
            await self._push(out, message)

    async def _state_of(self, newest: str | None) -> State | None:
        """The state of the conversation the visitor's newest message (`newest`) is in: the
        latest one, since a visitor's message opens a new one when none is open."""
        if newest is None:
            return None
        message = await self.context.history.get_message(newest)
        if message is None:
            return None
        conversation = await self.context.history.get_conversation(message.conversation_id)
        return None if conversation is None else conversation.state

    async def _push(self, out: Sender, message: Message) -> None:
        """Push a message; an agent reply reaching the visitor's socket is its delivery, so the
        visitor sees it `delivered` (as the agent will), not the `queued` it was stored as."""
        delivering = _undelivered(message)
        shown = visitor_message_json(message)
        if delivering:
            shown["status"] = str(DeliveryState.DELIVERED)
        await out.text(orjson.dumps({"type": "message", "message": shown}).decode())
        if delivering:
            await self._record_delivery(message)

    def _report(self, message: Message, state: DeliveryState) -> DeliveryStatus:
        """A delivery report on an agent reply, as a provider would send one. It names our
        message: the push can beat the send's own bookkeeping, and ingest then applies it at
        once instead of keeping it as a report for an unknown message."""
        return DeliveryStatus(
            channel=self.name,
            provider_message_id=message.id,
            status=state,
            at=self.context.clock.now(),
            message_id=message.id,
        )

    async def _record_delivery(self, message: Message) -> None:
        """Record that a reply reached the visitor. The socket may close as it arrives (the
        pump is cancelled then): the visitor saw it all the same, so the write goes on alone;
        else the reply would stay `sent`, and a reconnect without `after` would replay it."""
        status = self._report(message, DeliveryState.DELIVERED)
        write = asyncio.ensure_future(self.context.inbound.status(status))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            self._deliveries.add(write)
            write.add_done_callback(self._delivery_done)
            raise

    def _delivery_done(self, write: asyncio.Task[Any]) -> None:
        self._deliveries.discard(write)
        if not write.cancelled() and write.exception() is not None:
            self.context.log.warning(
                "webchat.delivery_not_recorded", channel=self.name, error=str(write.exception())
            )

    async def _on_text(
        self,
        ws: web.WebSocketResponse,
        session: VisitorSession,
        data: str,
        written_here: _WrittenHere,
    ) -> None:
        frame: Any = None
        try:
            frame = orjson.loads(data)
            message = self._parse_frame(frame, session)
        except (orjson.JSONDecodeError, InvalidInput) as exc:
            text = str(exc) if isinstance(exc, InvalidInput) else "the frame is not valid JSON"
            self.context.log.info("webchat.bad_frame", visitor=session.visitor_id)
            # Naming the message it refuses: without it, a widget that sent one too long for
            # this channel's `max_text` showed it as being sent for good, and held every later
            # message back behind it (accessibility re-audit).
            await _send_error(ws, "invalid_request", text, _named_client_id(frame))
            return
        if message is None:
            kind = frame.get("type") if isinstance(frame, dict) else None
            try:
                if kind == "ping":  # the widget's keep-alive: it drops a socket left unanswered
                    await ws.send_str('{"type":"pong"}')
                elif kind == "typing":
                    await self._visitor_typing(session)
                elif kind == "read":
                    refused = await self._visitor_read(session, frame)
                    if refused is not None:
                        self.context.log.info("webchat.bad_frame", visitor=session.visitor_id)
                        await _send_error(ws, "invalid_request", refused)
            except StoreUnavailable as exc:  # a typing indicator or receipt lost: no retry
                self.context.log.warning(
                    "webchat.store_unavailable", channel=self.name, error=str(exc)
                )
            return
        client_id = message.extra["client_id"]
        written_here.add(client_id)  # before it is stored: its event may come before the ack
        stored = False
        try:
            stored = await self._store_and_ack(ws, session, message, client_id, written_here)
        finally:
            written_here.settle(client_id, stored=stored)

    async def _store_and_ack(
        self,
        ws: web.WebSocketResponse,
        session: VisitorSession,
        message: InboundMessage,
        client_id: str,
        written_here: _WrittenHere,
    ) -> bool:
        """Store a visitor's message and answer it on the socket; whether it was newly stored
        (then its event reaches this socket's pushes, which wait for this answer)."""
        try:
            retry_after, result = await self._limited_store(session, message)
        except StoreUnavailable as exc:
            self.context.log.warning("webchat.store_unavailable", channel=self.name, error=str(exc))
            # The socket's answer to a 503: say why, then close so that the widget reconnects
            # (with backoff) and resends what was not acknowledged.
            await _send_error(ws, "store_unavailable", UNAVAILABLE_MESSAGE, client_id)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"store unavailable")
            return False
        except VersionConflict as exc:  # busy chat: nothing stored, the visitor sends again
            await _send_error(ws, "conflict", str(exc), client_id)
            return False
        if result is None:
            # Not stored: the visitor resends it (same client_id) after the wait.
            seconds = round(retry_after or 1)  # whole seconds, as REST's `retry_after`
            text = f"too many messages; retry in {seconds} s"
            await _send_error(ws, "rate_limited", text, client_id, retry_after=seconds)
            return False
        if _reused(result.duplicate, result.message, message):
            await _send_error(ws, "client_id_reused", CLIENT_ID_REUSED, client_id)
            return False
        # In stored order with the pushes: a widget resumes after the last message it got,
        # so an ack must not overtake the push of a message stored before it (re-audit: an
        # agent reply stored just before, on another node, was skipped on reconnecting).
        # A resend's message is old: it waits for the replay only.
        if not await written_here.pushed_up_to(client_id, duplicate=result.duplicate):
            self.context.log.warning(
                "webchat.ack_unordered", channel=self.name, message_id=result.message.id
            )
        shown = visitor_message_json(result.message)
        await ws.send_str(
            orjson.dumps({"type": "ack", "client_id": client_id, "message": shown}).decode()
        )
        return not result.duplicate

    async def _visitor_typing(self, session: VisitorSession) -> None:
        """Tell the agents the visitor is typing: a store read and a fan-out to every node, so
        beyond TYPING_RATE a visitor's typing frames are dropped (the indicator lasts seconds)."""
        over = await self.context.limiter.hit(
            TYPING_RATE, f"webchat:{self.name}:typing", session.visitor_id
        )
        if over is not None:
            return
        conversation = await self.context.history.find_open_conversation(
            self.name, session.visitor_id
        )
        if conversation is not None:
            await self.context.events.broadcast(
                Event(
                    type="conversation.typing",
                    at=self.context.clock.now(),
                    conversation=conversation,
                    change="visitor",
                )
            )

    def _parse_frame(self, frame: Any, session: VisitorSession) -> InboundMessage | None:
        if not isinstance(frame, dict):
            raise InvalidInput("a frame is a JSON object")
        kind = frame.get("type")
        if kind in ("ping", "typing", "read"):
            return None
        if kind != "message":
            raise InvalidInput("type must be 'message', 'typing', 'read' or 'ping'")
        text = frame.get("text")
        client_id = frame.get("client_id")
        if frame.get("attachments"):  # taken without them, a visitor would think them sent
            raise InvalidInput("visitors send text only: attachments are not taken")
        if not isinstance(text, str) or not shown_text(text).strip():
            raise InvalidInput("text is required")
        if len(text) > self.config.max_text:
            raise InvalidInput(f"text is longer than {self.config.max_text} characters")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidInput("client_id is required (a unique id per message, e.g. a UUID)")
        if len(client_id) > MAX_CLIENT_ID:
            raise InvalidInput(f"client_id is longer than {MAX_CLIENT_ID} characters")
        return InboundMessage(
            channel=self.name,
            channel_type=self.channel_type,
            provider=self.provider,
            provider_message_id=f"{session.visitor_id}:{client_id}",
            contact=Contact(session.visitor_id, session.display_name),
            sent_at=self.context.clock.now(),
            kind="text",
            text=text,
            raw={"type": "message", "text": text, "client_id": client_id},
            extra={"client_id": client_id},
        )

    # pages -------------------------------------------------------------------------------------
    async def widget(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=_static("widget.js"),
            content_type="application/javascript",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def demo(self, request: web.Request) -> web.StreamResponse:
        page = _static("demo.html").decode().replace("{{channel}}", self.name)
        page = page.replace("{{title}}", html.escape(self.config.title, quote=True))
        return web.Response(text=page, content_type="text/html", headers=DEMO_HEADERS)

    # outbound ----------------------------------------------------------------------------------
    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        """Replies travel to the visitor through the event feed; the id is our own."""
        if message.template is not None:
            raise PermanentChannelError("web chat has no templates", provider_code="unsupported")
        return SendResult(provider_message_id=message.id, status=DeliveryState.SENT)
