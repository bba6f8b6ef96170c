"""Twilio as a WhatsApp provider: X-Twilio-Signature, form webhooks, REST sends.

Sends go through twilio-python's async client so request shape and auth follow the library;
its HTTP client runs on the gateway's shared aiohttp session (twilio_http.py), and
`api.base_url` is pointed at `api_base_url` (PROTOCOLS.md 1.5).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
from aiohttp import web
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client
from yarl import URL

from gateway.channels import ChannelContext, SendResult
from gateway.errors import InvalidInput, PermanentChannelError, TransientChannelError
from gateway.model import Conversation, DeliveryState, Message
from plugins.whatsapp.config import WhatsAppConfig
from plugins.whatsapp.media import (
    TWILIO_API_HOST,
    TWILIO_MEDIA_HOSTS,
    HostPolicy,
    Media,
    download,
)
from plugins.whatsapp.parsed import ParseResult
from plugins.whatsapp.provider import redact
from plugins.whatsapp.send_errors import classify, is_auth_failure, retry_after
from plugins.whatsapp.signatures import twilio_signature_valid
from plugins.whatsapp.twilio_http import RETRY_AFTER, SharedSessionTwilioHttpClient
from plugins.whatsapp.twilio_parse import STATUS_MAP, form_params, parse_twilio_form
from plugins.whatsapp.webhook_http import json_error, twiml_ack

NAME = "twilio"
MAX_MEDIA_URLS = 10


def _pairs(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def to_address(address: str) -> str:
    """Twilio's WhatsApp channel address for a contact (`+1415...` -> `whatsapp:+1415...`)."""
    return address if address.startswith("whatsapp:") else f"whatsapp:{address}"


def content_variables(params: Any) -> str | None:
    """Template params as Twilio's ContentVariables JSON: a list becomes {"1": .., "2": ..}."""
    if not params:
        return None
    if isinstance(params, dict):
        mapping = {str(k): str(v) for k, v in params.items()}
    elif isinstance(params, list | tuple):
        mapping = {str(i): str(v) for i, v in enumerate(params, start=1)}
    else:
        raise PermanentChannelError("template params must be a list or an object")
    return orjson.dumps(mapping).decode()


CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")


CALLBACK_MESSAGE = "gw_message"
"""The StatusCallback query parameter that carries our message id."""


def check_content_sid(template: Mapping[str, Any]) -> None:
    """Twilio sends a WhatsApp template by its Content SID: refuse anything else at once
    (400 to the agent), not after a round trip to Twilio that can only fail."""
    name = template.get("name")
    if not isinstance(name, str) or not CONTENT_SID.fullmatch(name):
        raise InvalidInput(
            "on Twilio a template's name is its Content SID: HX followed by 32 hex digits"
        )


def twilio_send_params(
    config: WhatsAppConfig, address: str, message: Message, status_callback: str
) -> dict[str, Any]:
    """The keyword arguments of `messages.create_async` for one agent message.

    Templates go as ContentSid (+ ContentVariables) without Body, which Twilio requires for
    WhatsApp templates since 2025-04 (PROTOCOLS.md 1.2); `template.name` is the Content SID.
    """
    # Our message id rides in the callback's query (Twilio signs the whole URL): a report then
    # finds its message even if the send's answer, with the SID, never got recorded.
    callback = f"{status_callback}?{urlencode({CALLBACK_MESSAGE: message.id})}"
    params: dict[str, Any] = {"to": to_address(address), "status_callback": callback}
    if config.from_:
        params["from_"] = config.from_
    if config.messaging_service_sid:
        params["messaging_service_sid"] = config.messaging_service_sid
    template = message.template
    if template:
        sid = template.get("name")
        if not sid or not isinstance(sid, str):
            raise PermanentChannelError("a Twilio template needs `name` (the Content SID HX...)")
        params["content_sid"] = sid
        variables = content_variables(template.get("params"))
        if variables is not None:
            params["content_variables"] = variables
        return params
    urls = [a.url for a in message.attachments]
    if any(not url for url in urls):
        raise PermanentChannelError("Twilio sends media by public URL; an attachment has none")
    if len(urls) > MAX_MEDIA_URLS:
        raise PermanentChannelError(f"Twilio accepts at most {MAX_MEDIA_URLS} media per message")
    if message.text:
        params["body"] = message.text
    if urls:
        params["media_url"] = urls
    if "body" not in params and "media_url" not in params:
        raise PermanentChannelError("the message has no text, media or template")
    return params


class TwilioProvider:
    """Twilio's side of a WhatsApp channel instance."""

    name = NAME
    webhook_methods = "POST"
    """What its webhook URL takes: Twilio only POSTs."""

    def __init__(self, context: ChannelContext, config: WhatsAppConfig) -> None:
        self._context = context
        self._config = config
        self._client: Any = None
        self.auth_problem: str | None = None

    @property
    def _token(self) -> str:
        return self._config.secret("auth_token")

    def _url(self, request: web.Request) -> str:
        """The URL Twilio signed: our public webhook URL (with the trailing slash it was
        called with, if any) plus the query it was called with."""
        query = request.rel_url.raw_query_string
        base = self._context.webhook_url()
        if request.path.endswith("/") and not base.endswith("/"):
            base += "/"
        return f"{base}?{query}" if query else base

    def signature_ok(self, request: web.Request, body: bytes) -> bool:
        signature = request.headers.get("X-Twilio-Signature")
        return twilio_signature_valid(
            self._token, self._url(request), _pairs(body), signature, body
        )

    def parse(self, body: bytes, now: datetime, query: Mapping[str, str]) -> ParseResult:
        result = parse_twilio_form(form_params(_pairs(body)), channel=self._context.name, now=now)
        ours = query.get(CALLBACK_MESSAGE)
        if ours:
            result.statuses = [replace(s, message_id=ours) for s in result.statuses]
        return result

    def ack(self) -> web.Response:
        return twiml_ack()

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        return json_error(
            405, "method_not_allowed", "Twilio webhooks are POST", {"Allow": self.webhook_methods}
        )

    def _twilio(self) -> Any:
        """Return the twilio-python client, aimed at api_base_url, on the shared session.

        Built once, lazily: the shared session exists only once the server runs, and the
        HTTP client fetches it per request (see twilio_http.py).
        """
        if self._client is None:
            http = SharedSessionTwilioHttpClient(
                lambda: self._context.http, self._config.request_timeout.total_seconds()
            )
            client = Client(self._config.account_sid, self._token, http_client=http)
            # Edge/region from the environment would rewrite the host: api_base_url decides.
            client.edge = None
            client.region = None
            client.api.base_url = self._config.base_url
            self._client = client
        return self._client

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        params = twilio_send_params(
            self._config, conversation.contact.address, message, self._context.webhook_url()
        )
        RETRY_AFTER.set(None)
        try:
            async with asyncio.timeout(self._config.request_timeout.total_seconds()):
                created = await self._twilio().messages.create_async(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._refusal(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientChannelError(f"twilio unreachable: {type(exc).__name__}") from None
        self.auth_problem = None
        if not created.sid:
            # Without its SID no status report can ever be matched to it: it would stay
            # queued for good. Twilio always answers with one; a stand-in or proxy may not.
            raise PermanentChannelError("twilio accepted the message but returned no sid")
        status = STATUS_MAP.get(str(created.status), DeliveryState.QUEUED)
        return SendResult(provider_message_id=created.sid, status=status)

    def _refusal(self, exc: TwilioRestException | TwilioServiceException) -> Exception:
        code = str(exc.code) if exc.code is not None else None
        status = int(exc.status)
        reason = getattr(exc, "msg", None) or getattr(exc, "title", None) or ""
        reason = redact(str(reason), [self._token])
        if is_auth_failure(NAME, status, code):
            self.auth_problem = f"Twilio rejected the credentials (code {code})"
        return classify(NAME, status, code, reason, retry_after(RETRY_AFTER.get()))

    def _auth_headers(self, url: URL) -> dict[str, str]:
        """Basic auth only for Twilio's API host (or the stand-in), never for the CDN."""
        base = URL(self._config.base_url)
        on_base = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
        if on_base or (url.scheme == "https" and url.host == TWILIO_API_HOST):
            auth = aiohttp.encode_basic_auth(self._config.account_sid or "", self._token)
            return {"Authorization": auth}
        return {}

    async def fetch_media(self, ref: str) -> Media:
        # On the API host a MediaUrl is the media of a message of this account: any other
        # path there answers with what the credentials sent along may read.
        account = re.escape(self._config.account_sid or "")
        policy = HostPolicy(
            TWILIO_MEDIA_HOSTS,
            base_url=self._config.base_url,
            api_hosts=(TWILIO_API_HOST,),
            api_path=re.compile(
                rf"/2010-04-01/Accounts/{account}/Messages/[A-Za-z0-9]+/Media/[A-Za-z0-9]+"
            ),
        )
        return await download(
            self._context.http,
            ref,
            policy=policy,
            headers_for=self._auth_headers,
            time_limit=self._config.request_timeout * 4,
        )
