"""The `whatsapp` channel adapter: one configured number, Twilio or Meta behind it.

The webhook flow is the same for both providers and lives here, in the order the adapter
protocol demands: cap the body, verify the signature before believing anything, parse, hand
every item to ingest (which returns after a durable commit), and only then acknowledge. If any
item failed to ingest the answer is 500 so the provider re-delivers; ingest deduplicates on the
provider message id, so the items that did get stored are not stored twice. When the store is
unavailable (down, or not answering in time) the answer is 503 `store_unavailable` at once,
without trying the items after it (each would wait for the store again, and the provider stops
waiting after a few seconds: Twilio after 15 s in all).
"""

from __future__ import annotations

from aiohttp import web

from gateway.bodies import read_within
from gateway.channels import (
    BaseAdapter,
    ChannelContext,
    ChannelHealth,
    MediaContent,
    SendResult,
)
from gateway.errors import (
    InvalidInput,
    PermanentChannelError,
    StoreUnavailable,
    TransientChannelError,
)
from gateway.model import Attachment, Conversation, Message
from gateway.outbound import OutboundRequest
from plugins.whatsapp import numbers
from plugins.whatsapp.aliases import ContactAliases
from plugins.whatsapp.config import WhatsAppConfig
from plugins.whatsapp.meta_provider import CAPTIONED, MetaProvider, media_kind
from plugins.whatsapp.parsed import MalformedPayload, ParseResult
from plugins.whatsapp.provider import Provider
from plugins.whatsapp.twilio_provider import TwilioProvider, check_content_sid
from plugins.whatsapp.webhook_http import BodyTooLarge, json_error, read_body

UNREACHABLE_AFTER = 3
"""Consecutive transient send failures after which /readyz lists the channel as degraded
(one message's retries count: three tries that all failed mean nothing gets through)."""


class WhatsAppAdapter(BaseAdapter):
    """A running WhatsApp channel instance (see `gateway.channels` for the protocol)."""

    channel_type = "whatsapp"
    supports_templates = True

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        if not isinstance(context.config, WhatsAppConfig):
            raise TypeError("the whatsapp adapter needs a WhatsAppConfig")
        self.config = context.config
        self.provider = self.config.provider
        # The Cloud API carries one medium per message; Twilio up to ten MediaUrl.
        self.max_attachments = 1 if self.config.provider == "cloud_api" else 10
        self._provider: Provider = (
            TwilioProvider(context, self.config)
            if self.config.provider == "twilio"
            else MetaProvider(context, self.config, self._sibling_channel)
        )
        self._aliases = ContactAliases(context.kv, self.name)
        self._transient_failures = 0
        self._last_transient = ""

    async def start(self) -> None:
        if self.config.provider == "cloud_api" and self.config.phone_number_id:
            numbers.register(self.context.kv, self.config.phone_number_id, self)

    async def stop(self) -> None:
        if self.config.provider == "cloud_api" and self.config.phone_number_id:
            numbers.unregister(self.context.kv, self.config.phone_number_id, self)

    def app_secret(self) -> str:
        return self.config.secret("app_secret")

    def _siblings(self) -> dict[str, WhatsAppAdapter]:
        """This gateway's other Cloud API channels of the same Meta app, by number."""
        found = numbers.siblings(self.context.kv, self)
        return {number: c for number, c in found.items() if isinstance(c, WhatsAppAdapter)}

    def _sibling_channel(self, phone_number_id: str) -> str | None:
        """The channel of another number of this gateway's same Meta app, if one has it."""
        sibling = self._siblings().get(phone_number_id)
        return sibling.name if sibling is not None else None

    def check_outbound(self, request: OutboundRequest) -> None:
        """Refuse (InvalidInput: a 400 to the agent, nothing stored) what this provider can
        only refuse: a Twilio template not named by Content SID; on the Cloud API, text with
        an audio or sticker first attachment, which carry no caption (the text goes with the
        first attachment; send it on its own, then the file)."""
        if self.config.provider == "twilio":
            if request.template is not None:
                check_content_sid(request.template)
                if request.template.get("components"):
                    raise InvalidInput(
                        "template components are the Cloud API's: on Twilio a Content"
                        " template carries its own; give its variables in params"
                    )
            return
        template = request.template or {}
        components = template.get("components") or ()
        has_body = any(c.get("type") == "body" for c in components if isinstance(c, dict))
        if template.get("params") and has_body:
            raise InvalidInput("template params and a body component: give one of them")
        if request.text and request.attachments:
            kind = media_kind(request.attachments[0])
            if kind not in CAPTIONED:
                raise InvalidInput(
                    f"WhatsApp {kind} messages carry no text: send the text on its own first"
                )

    async def handle_webhook(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return await self._provider.handshake(request)
        if request.method != "POST":  # a 405 says what is taken (RFC 9110 15.5.6)
            return json_error(
                405,
                "method_not_allowed",
                "webhooks are POST (GET for Meta's check)",
                {"Allow": self._provider.webhook_methods},
            )
        log = self.context.log
        try:
            body = await read_within(request, read_body(request, self.config.max_webhook_bytes))
        except BodyTooLarge:
            log.warning("webhook.too_large", channel=self.name, provider=self.provider)
            return json_error(413, "payload_too_large", "webhook body is too large")
        if not self._provider.signature_ok(request, body):
            log.warning(
                "webhook.signature_invalid",
                channel=self.name,
                provider=self.provider,
                peer=request.remote,
            )
            return json_error(403, "invalid_signature", "missing or invalid webhook signature")
        try:
            result = self._provider.parse(body, self.context.clock.now(), request.query)
        except MalformedPayload as exc:
            log.warning(
                "webhook.malformed", channel=self.name, provider=self.provider, reason=str(exc)
            )
            return json_error(400, "invalid_request", f"unreadable webhook payload: {exc}")
        self._log_result(result)
        try:
            stored = await self._deliver(result)
        except StoreUnavailable as exc:
            log.warning(
                "webhook.store_unavailable",
                channel=self.name,
                provider=self.provider,
                error=str(exc),
            )
            return json_error(503, "store_unavailable", "the store is unavailable; retry")
        if not stored:
            return json_error(500, "ingest_failed", "could not store every item; retry")
        return self._provider.ack()

    def _log_result(self, result: ParseResult) -> None:
        log = self.context.log
        for problem in result.problems:
            log.warning(
                "webhook.item_skipped",
                channel=self.name,
                provider=self.provider,
                where=problem.where,
                reason=problem.reason,
            )
        for message in result.messages:
            unreadable = message.extra.get("unreadable")
            if unreadable:  # stored as `unsupported`; the shape of the payload is worth a look
                log.warning(
                    "webhook.item_unreadable",
                    channel=self.name,
                    provider=self.provider,
                    provider_message_id=message.provider_message_id,
                    reason=unreadable,
                )
        for error in result.errors:
            log.warning(
                "whatsapp.provider_error",
                channel=self.name,
                provider=self.provider,
                code=error.code,
                title=error.title,
                details=error.details,
            )

    async def _deliver(self, result: ParseResult) -> bool:
        """Hand every item to ingest, even after one fails; True when all were stored.

        `StoreUnavailable` is raised at once instead: the items after it would only wait for
        the store too, and the provider re-delivers the whole webhook anyway.
        """
        ok = True
        inbound = self.context.inbound
        owners = {self.name: self}
        if any(message.channel != self.name for message in result.messages):
            owners.update((c.name, c) for c in self._siblings().values())
        for message in result.messages:
            try:
                # Another number's message (see `numbers`) with that channel's contacts.
                owner = owners[message.channel]
                await inbound.message(await owner._aliases.resolve(message))
            except StoreUnavailable:
                raise
            except Exception as exc:
                ok = False
                self._ingest_failed("message", message.provider_message_id, exc)
        for status in result.statuses:
            try:
                await inbound.status(status)
            except StoreUnavailable:
                raise
            except Exception as exc:
                ok = False
                self._ingest_failed("status", status.provider_message_id, exc)
        return ok

    def _ingest_failed(self, item: str, provider_id: str, exc: Exception) -> None:
        self.context.log.error(
            "webhook.ingest_failed",
            channel=self.name,
            provider=self.provider,
            item=item,
            provider_message_id=provider_id,
            error=type(exc).__name__,
            detail=str(exc),
        )

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        """Deliver an agent message; raises Transient/PermanentChannelError (core retries).

        Consecutive transient failures (provider unreachable, 5xx, 429, time-outs) are counted
        so that /readyz shows the channel degraded while nothing gets through; any answer
        that is not transient (a send, or a refusal of this one message) clears it.
        """
        try:
            result = await self._provider.send(conversation, message)
        except TransientChannelError as exc:
            self._transient_failures += 1
            self._last_transient = str(exc)
            raise
        except PermanentChannelError:
            self._transient_failures = 0
            raise
        self._transient_failures = 0
        return result

    async def fetch_media(self, attachment: Attachment) -> MediaContent:
        """Download an inbound attachment from the provider's hosts (`MediaSource`).

        A Meta media id is preferred to the URL beside it: lookaside URLs expire after about
        five minutes, while the id resolves to a fresh one. Twilio only gives URLs.
        """
        ref = attachment.media_id or attachment.url
        if not ref:
            raise PermanentChannelError("the attachment has neither a media id nor a URL")
        media = await self._provider.fetch_media(ref)
        return MediaContent(data=media.data, mime_type=media.mime_type)

    def health(self) -> ChannelHealth:
        if self._provider.auth_problem:
            return ChannelHealth(ok=False, detail=self._provider.auth_problem)
        if self._transient_failures >= UNREACHABLE_AFTER:
            detail = (
                f"the last {self._transient_failures} send attempts failed transiently"
                f" ({self._last_transient})"
            )
            return ChannelHealth(ok=False, detail=detail)
        return ChannelHealth(ok=True)


def make_adapter(context: ChannelContext) -> WhatsAppAdapter:
    """The `ChannelType.factory`: build the adapter for one configured whatsapp channel."""
    return WhatsAppAdapter(context)
