"""Helpers shared by the whatsapp adapter tests: fixture files, a recording inbound sink,
channel contexts, signing with independent implementations, and model builders."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import structlog
from twilio.request_validator import RequestValidator

from gateway.channels import ChannelContext
from gateway.clock import ManualClock
from gateway.model import (
    Attachment,
    Contact,
    Conversation,
    DeliveryStatus,
    Direction,
    InboundMessage,
    Message,
    State,
)
from plugins.whatsapp import WhatsAppConfig

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
META_DIR = FIXTURES / "meta"
TWILIO_DIR = FIXTURES / "twilio"

PUBLIC_URL = "https://gw.example.com"
TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "twilio-secret-token-6789"
META_TOKEN = "EAAG-secret-access-token"
META_APP_SECRET = "meta-app-secret"
META_VERIFY = "verify-me-please"
NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)


def meta_files() -> list[Path]:
    return sorted(META_DIR.glob("*.json"))


def twilio_files() -> list[Path]:
    return sorted(p for p in TWILIO_DIR.iterdir() if p.suffix == ".txt")


def fixture_bytes(path: Path) -> bytes:
    """The exact bytes of a fixture file (what the provider signed)."""
    return path.read_bytes()


def twilio_pairs(path: Path) -> list[tuple[str, str]]:
    """Decoded form pairs of a Twilio fixture (`*.kv.txt` is one key=value per line)."""
    text = path.read_text()
    if path.name.endswith(".kv.txt"):
        return [(k, v) for k, _, v in (line.partition("=") for line in text.splitlines() if line)]
    return parse_qsl(text, keep_blank_values=True)


def twilio_body(path: Path) -> bytes:
    """The raw POST body: byte-exact for urlencoded fixtures, encoded for `*.kv.txt`."""
    if path.name.endswith(".kv.txt"):
        return urlencode(twilio_pairs(path)).encode()
    return path.read_bytes()


def twilio_sign(url: str, pairs: list[tuple[str, str]], token: str = TWILIO_TOKEN) -> str:
    """Sign with twilio-python's own RequestValidator (independent of our implementation)."""
    params: dict[str, str] = {}
    for key, value in pairs:
        params[key] = value
    return str(RequestValidator(token).compute_signature(url, params))


def meta_sign(body: bytes, secret: str = META_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def meta_phone_number_id(path: Path) -> str:
    payload = json.loads(path.read_bytes())
    return str(payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"])


class RecordingInbound:
    """An `Inbound` that records what it is handed; `fail_on` ids raise like a failed commit."""

    def __init__(self, fail_on: frozenset[str] = frozenset()) -> None:
        self.messages: list[InboundMessage] = []
        self.statuses: list[DeliveryStatus] = []
        self.fail_on = fail_on

    async def message(self, inbound: InboundMessage) -> Any:
        if inbound.provider_message_id in self.fail_on:
            raise RuntimeError("store unavailable")
        self.messages.append(inbound)
        return None

    async def status(self, status: DeliveryStatus) -> Any:
        if status.provider_message_id in self.fail_on:
            raise RuntimeError("store unavailable")
        self.statuses.append(status)
        return None


class MemoryKV:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def kv_get(self, key: str) -> str | None:
        return self.values.get(key)

    async def kv_set(self, key: str, value: str) -> None:
        self.values[key] = value


class _NoHistory:
    async def find_open_conversation(self, channel: str, address: str) -> Conversation | None:
        return None

    async def get_message(self, message_id: str) -> Message | None:
        return None

    async def list_contact_messages(
        self, channel: str, address: str, *, after: str | None = None, limit: int = 1000
    ) -> list[Message]:
        return []


class _NoEvents:
    def subscribe(self, accept: Callable[[Any], bool] = lambda e: True, maxsize: int = 0) -> Any:
        raise NotImplementedError


def twilio_config(**overrides: Any) -> WhatsAppConfig:
    data: dict[str, Any] = {
        "name": "wa-twilio",
        "type": "whatsapp",
        "provider": "twilio",
        "account_sid": TWILIO_SID,
        "auth_token": TWILIO_TOKEN,
        "from": "whatsapp:+14155238886",
    }
    data.update(overrides)
    return WhatsAppConfig.model_validate(data)


def meta_config(**overrides: Any) -> WhatsAppConfig:
    data: dict[str, Any] = {
        "name": "wa-cloud",
        "type": "whatsapp",
        "provider": "cloud_api",
        "phone_number_id": "1122334455667",
        "access_token": META_TOKEN,
        "app_secret": META_APP_SECRET,
        "verify_token": META_VERIFY,
    }
    data.update(overrides)
    return WhatsAppConfig.model_validate(data)


def make_context(
    config: WhatsAppConfig,
    session: aiohttp.ClientSession,
    inbound: RecordingInbound | None = None,
    clock: ManualClock | None = None,
) -> ChannelContext:
    """Build a ChannelContext whatever its current shape (`http` or `http_provider`)."""
    fields = {f.name for f in dataclasses.fields(ChannelContext)}
    args: dict[str, Any] = {
        "config": config,
        "public_url": PUBLIC_URL,
        "inbound": inbound or RecordingInbound(),
        "kv": MemoryKV(),
        "clock": clock or ManualClock(NOW),
        "log": structlog.get_logger("tests.whatsapp"),
    }
    if "http_provider" in fields:
        args["http_provider"] = lambda: session
    else:
        args["http"] = session
    if "history" in fields:
        args["history"] = _NoHistory()
    if "events" in fields:
        args["events"] = _NoEvents()
    return ChannelContext(**args)


def conversation(address: str = "+5511999990000") -> Conversation:
    return Conversation(
        id="c_1",
        channel="wa",
        channel_type="whatsapp",
        provider="test",
        contact=Contact(address=address, display_name="Ana"),
        state=State.ACTIVE,
        queue="support",
        created_at=NOW,
        updated_at=NOW,
        queued_at=NOW,
    )


def agent_message(
    text: str | None = "Hola Ana",
    *,
    attachments: tuple[Attachment, ...] = (),
    template: dict[str, Any] | None = None,
    reply_to: str | None = None,
) -> Message:
    return Message(
        id="m_01TEST",
        conversation_id="c_1",
        channel="wa",
        channel_type="whatsapp",
        provider="test",
        direction=Direction.OUT,
        kind="template" if template else "text",
        text=text,
        sent_at=NOW,
        received_at=NOW,
        attachments=attachments,
        template=template,
        reply_to=reply_to,
    )
