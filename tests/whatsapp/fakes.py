"""Stand-in provider APIs as small aiohttp apps: they answer like Twilio's REST API and Meta's
Graph API (including their error bodies) and record what the adapter sent.

Knobs a test may set on either stand-in, applied to each send in this order:

- `hang`: the next N sends wait until `release()` (the caller's timeout fires first);
- `delay`: seconds every send waits before answering;
- `replies`: scripted `(status, body)` answers, used up one per send (errors, odd bodies);
- `next_ids`: the provider ids successful sends return (else generated ones);
- `before_reply`: awaited with the call and the id about to be returned, before answering:
  how a test makes the provider report a status before its send API has answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BasicAuth, web

from tests.whatsapp.support import META_TOKEN, TWILIO_SID, TWILIO_TOKEN

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]] = field(default_factory=dict)
    json: Any = None


BeforeReply = Callable[["Call", str], Awaitable[None]]


class _Knobs:
    """The per-send behaviour both stand-ins share (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.replies: list[tuple[Any, ...]] = []
        self.delay = 0.0
        self.hang = 0
        self.next_ids: list[str] = []
        self.before_reply: BeforeReply | None = None
        self.base_url = ""
        self.arrived = asyncio.Event()
        """Set when a send has arrived (and was recorded in `calls`), before it is answered."""
        self._released = asyncio.Event()

    def release(self) -> None:
        """Let every hanging send answer (fixtures call this before the server closes)."""
        self._released.set()

    async def _scripted(self) -> web.Response | None:
        """Wait as told, then return the next scripted answer (None: answer normally)."""
        self.arrived.set()
        if self.hang > 0:
            self.hang -= 1
            await self._released.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.replies:
            status, reply, *more = self.replies.pop(0)
            headers = more[0] if more else None  # a third item: response headers
            if isinstance(reply, str):
                return web.Response(text=reply, status=status, headers=headers)
            return web.json_response(reply, status=status, headers=headers)
        return None

    async def _accepting(self, call: Call, generated: str) -> str:
        """Pick the id a successful send returns and run `before_reply` with it."""
        provider_id = self.next_ids.pop(0) if self.next_ids else generated
        if self.before_reply is not None:
            await self.before_reply(call, provider_id)
        return provider_id


def twilio_error(code: int, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    """Twilio's legacy error body, as `TwilioRestException` expects it."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return status, body


def meta_error(code: int, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
    """Graph's error body (PROTOCOLS.md 2.6)."""
    body = {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": f"details of {code}"},
            "fbtrace_id": "AbCdEf123",
        }
    }
    return status, body


class FakeTwilio(_Knobs):
    """`POST /2010-04-01/Accounts/{sid}/Messages.json` plus media URLs and redirects."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages/{msg}/Media/{media}", self.media)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self.account_log)
        return app

    def _authorized(self, request: web.Request) -> bool:
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return (auth.login, auth.password) == (TWILIO_SID, TWILIO_TOKEN)

    async def create(self, request: web.Request) -> web.Response:
        if request.match_info["sid"] != TWILIO_SID or not self._authorized(request):
            status, body = twilio_error(20003, "Authenticate", 401)
            return web.json_response(body, status=status)
        form = await request.post()
        call = Call(
            request.path,
            dict(request.headers),
            form={k: [str(v) for v in form.getall(k)] for k in set(form.keys())},
        )
        self.calls.append(call)
        scripted = await self._scripted()
        if scripted is not None:
            return scripted
        sid = await self._accepting(call, f"SM{len(self.calls):032d}")
        return web.json_response(
            {"sid": sid, "status": "queued", "to": form.get("To"), "account_sid": TWILIO_SID},
            status=201,
        )

    async def media(self, request: web.Request) -> web.Response:
        """Media ME1's bytes; MEin redirects to ME1, MEout off Twilio's hosts (as Twilio
        redirects a media URL to its CDN)."""
        if not self._authorized(request):
            return web.Response(status=401)
        if request.match_info["media"] == "MEin":
            raise web.HTTPFound(f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM1/Media/ME1")
        if request.match_info["media"] == "MEout":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        return web.Response(body=PNG, content_type="image/png")

    async def account_log(self, request: web.Request) -> web.Response:
        """What the API answers the account's credentials elsewhere: its message log."""
        if not self._authorized(request):
            return web.Response(status=401)
        return web.json_response({"messages": [{"body": "a secret from another chat"}]})


class FakeGraph(_Knobs):
    """`POST /{version}/{phone_number_id}/messages`, `GET /{version}/{media_id}`, media bytes."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{phone}/messages", self.send)
        app.router.add_get("/media-bin/{media}", self.media_bytes)
        app.router.add_get("/{version}/{media}", self.media_info)
        return app

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {META_TOKEN}"

    def _denied(self) -> web.Response:
        status, body = meta_error(
            190, "Invalid OAuth access token - Cannot parse access token", 401
        )
        return web.json_response(body, status=status)

    async def send(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        body = await request.json()
        call = Call(request.path, dict(request.headers), json=body)
        self.calls.append(call)
        scripted = await self._scripted()
        if scripted is not None:
            return scripted
        wamid = await self._accepting(call, f"wamid.OUT{len(self.calls)}")
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )

    async def media_info(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._denied()
        media = request.match_info["media"]
        urls = {
            "m1": f"{self.base_url}/media-bin/m1",
            "evil": "http://169.254.169.254/latest/meta-data/",
            "lookalike": "https://lookaside.fbsbx.com.evil.example/x",
        }
        if media not in urls:
            status, body = meta_error(100, "Unsupported get request", 400)
            return web.json_response(body, status=status)
        return web.json_response(
            {
                "url": urls[media],
                "mime_type": "image/png",
                "id": media,
                "messaging_product": "whatsapp",
            }
        )

    async def media_bytes(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        return web.Response(body=PNG, content_type="application/octet-stream")
