"""Meta's WhatsApp Cloud API as a provider: GET handshake, X-Hub-Signature-256, Graph sends.

Requests use the gateway's shared aiohttp session with the access token as a bearer header;
the token never appears in URLs, logs or error messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from gateway.channels import ChannelContext, SendResult
from gateway.errors import PermanentChannelError, TransientChannelError
from gateway.model import Attachment, Conversation, DeliveryState, Message
from plugins.whatsapp.config import WhatsAppConfig
from plugins.whatsapp.media import META_MEDIA_HOSTS, HostPolicy, Media, download
from plugins.whatsapp.meta_parse import parse_meta_body
from plugins.whatsapp.parsed import ParseResult
from plugins.whatsapp.provider import redact
from plugins.whatsapp.send_errors import classify, is_auth_failure, retry_after
from plugins.whatsapp.signatures import meta_signature_valid, token_equal
from plugins.whatsapp.webhook_http import json_ack, json_error

NAME = "cloud_api"
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
CAPTIONED = ("image", "video", "document")
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_CALLBACK_DATA = 512


def recipient(address: str) -> str:
    """Graph's `to`: the phone's digits without `+` (a BSUID is passed through)."""
    return address[1:] if address.startswith("+") else address


def media_kind(attachment: Attachment) -> str:
    """The Cloud API media type an attachment goes out as."""
    if attachment.kind in MEDIA_KINDS:
        return attachment.kind
    major = (attachment.mime_type or "").split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


def _template(template: dict[str, Any]) -> dict[str, Any]:
    name = template.get("name")
    language = template.get("language")
    if not name or not language:
        raise PermanentChannelError("a template needs `name` and `language`")
    body: dict[str, Any] = {"name": name, "language": {"code": language}}
    # Components given as Meta takes them (header media, button parameters), then the body's
    # variables from `params`, unless a body component was given already.
    components: list[Any] = list(template.get("components") or ())
    params = template.get("params")
    if params:
        if isinstance(params, dict):
            parameters = [
                {"type": "text", "parameter_name": str(k), "text": str(v)}
                for k, v in params.items()
            ]
        elif isinstance(params, list | tuple):
            parameters = [{"type": "text", "text": str(v)} for v in params]
        else:
            raise PermanentChannelError("template params must be a list or an object")
        if any(isinstance(c, dict) and c.get("type") == "body" for c in components):
            raise PermanentChannelError("template params and a body component: give one")
        components.append({"type": "body", "parameters": parameters})
    if components:
        body["components"] = components
    return body


def meta_send_payload(address: str, message: Message) -> dict[str, Any]:
    """The JSON body of `POST /{phone_number_id}/messages` for one agent message.

    One request carries one message, so at most one attachment (with the text as caption where
    WhatsApp allows captions). `biz_opaque_callback_data` carries our message id so status
    webhooks can be correlated even before the wamid is stored.
    """
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": recipient(address),
    }
    if message.template:
        payload.update(type="template", template=_template(message.template))
    elif message.attachments:
        if len(message.attachments) > 1:
            raise PermanentChannelError("the Cloud API sends one attachment per message")
        attachment = message.attachments[0]
        kind = media_kind(attachment)
        media: dict[str, Any] = {}
        if attachment.media_id:
            media["id"] = attachment.media_id
        elif attachment.url:
            media["link"] = attachment.url
        else:
            raise PermanentChannelError("an attachment needs a media id or a public URL")
        if message.text:
            if kind not in CAPTIONED:
                raise PermanentChannelError(f"WhatsApp {kind} messages cannot carry text")
            media["caption"] = message.text
        if kind == "document" and attachment.filename:
            media["filename"] = attachment.filename
        payload.update({"type": kind, kind: media})
    elif message.text:
        payload.update(type="text", text={"preview_url": False, "body": message.text})
    else:
        raise PermanentChannelError("the message has no text, media or template")
    if message.reply_to:
        payload["context"] = {"message_id": message.reply_to}
    if message.id and len(message.id.encode()) <= MAX_CALLBACK_DATA:
        payload["biz_opaque_callback_data"] = message.id
    return payload


class MetaProvider:
    """Meta's side of a WhatsApp channel instance."""

    name = NAME
    webhook_methods = "GET, POST"
    """What its webhook URL takes: POST deliveries, GET for Meta's verification handshake."""

    def __init__(
        self,
        context: ChannelContext,
        config: WhatsAppConfig,
        siblings: Callable[[str], str | None] | None = None,
    ) -> None:
        self._context = context
        self._config = config
        self._siblings = siblings
        """The channel of another number of the same Meta app in this gateway, by phone number
        id: its items may arrive here (one webhook URL per app) and belong to it."""
        self.auth_problem: str | None = None

    @property
    def _token(self) -> str:
        return self._config.secret("access_token")

    def _headers(self, _url: URL | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _graph(self, path: str) -> str:
        return f"{self._config.base_url}/{self._config.graph_version}/{path}"

    def signature_ok(self, request: web.Request, body: bytes) -> bool:
        header = request.headers.get("X-Hub-Signature-256")
        return meta_signature_valid(self._config.secret("app_secret"), body, header)

    def parse(self, body: bytes, now: datetime, query: Mapping[str, str]) -> ParseResult:
        return parse_meta_body(
            body,
            channel=self._context.name,
            now=now,
            phone_number_id=self._config.phone_number_id,
            siblings=self._siblings,
        )

    def ack(self) -> web.Response:
        return json_ack()

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        """Meta's subscription check: echo `hub.challenge` only for our verify token."""
        query = request.query
        token_ok = token_equal(self._config.secret("verify_token"), query.get("hub.verify_token"))
        if query.get("hub.mode") != "subscribe" or not token_ok:
            self._context.log.warning(
                "webhook.verify_failed", channel=self._context.name, provider=NAME
            )
            return json_error(403, "forbidden", "verification failed")
        challenge = query.get("hub.challenge")
        if not challenge:
            return json_error(400, "invalid_request", "hub.challenge is missing")
        return web.Response(text=challenge, content_type="text/plain")

    async def _call(self, method: str, url: str, json: Any = None) -> dict[str, Any]:
        """One Graph API call; returns the JSON answer or raises the classified error."""
        timeout = aiohttp.ClientTimeout(total=self._config.request_timeout.total_seconds())
        try:
            async with self._context.http.request(
                method, url, json=json, headers=self._headers(), timeout=timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                wait = retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientChannelError(f"graph API unreachable: {type(exc).__name__}") from None
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status >= 400 or "error" in data:
            raise self._refusal(status, data, wait)
        self.auth_problem = None
        return data

    def _refusal(self, status: int, data: dict[str, Any], wait: float | None = None) -> Exception:
        error = data.get("error")
        if not isinstance(error, dict):
            error = {}
        code = str(error["code"]) if error.get("code") is not None else None
        reason = str(error.get("message") or "")
        error_data = error.get("error_data")
        details = error_data.get("details") if isinstance(error_data, dict) else None
        if details:
            reason = f"{reason} ({details})"
        reason = redact(reason, [self._token])
        if is_auth_failure(NAME, status, code):
            self.auth_problem = f"Meta rejected the access token (code {code})"
        return classify(NAME, status if status >= 400 else 400, code, reason, wait)

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        payload = meta_send_payload(conversation.contact.address, message)
        data = await self._call(
            "POST", self._graph(f"{self._config.phone_number_id}/messages"), payload
        )
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise PermanentChannelError("graph API accepted the message but returned no id")
        first = messages[0]
        # `accepted` means Meta queued it; the `sent` status webhook moves it forward.
        return SendResult(provider_message_id=str(first.get("id")), status=DeliveryState.QUEUED)

    async def fetch_media(self, ref: str) -> Media:
        """Download by URL, or resolve a media id via `GET /{media-id}` first (PROTOCOLS 2.4)."""
        # A URL a webhook named must be on Meta's media hosts: one on the Graph API's own host
        # would be fetched with the access token, and whatever the API answers to it handed to
        # an agent. The URL Graph itself answers for a media id is Meta's word, wherever it is.
        policy = HostPolicy(META_MEDIA_HOSTS)
        declared: str | None = None
        url = ref
        if not ref.startswith(("https://", "http://")):
            policy = HostPolicy(META_MEDIA_HOSTS, base_url=self._config.base_url)
            if not _MEDIA_ID.match(ref):
                raise PermanentChannelError("not a media id or URL")
            info = await self._call("GET", self._graph(ref))
            url = str(info.get("url") or "")
            declared = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
        media = await download(
            self._context.http,
            url,
            policy=policy,
            headers_for=self._headers,
            time_limit=self._config.request_timeout * 4,
        )
        return Media(data=media.data, mime_type=declared or media.mime_type)
