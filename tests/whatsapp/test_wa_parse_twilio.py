"""Every Twilio fixture maps to a normalized message or status (parametrized over the
directory listing, so new fixture files are covered automatically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.model import DeliveryState
from plugins.whatsapp.parsed import MalformedPayload, ParseResult
from plugins.whatsapp.twilio_parse import form_params, parse_twilio_form, strip_channel
from tests.whatsapp.support import NOW, TWILIO_DIR, twilio_files, twilio_pairs

SID = "SMe287d7109a5a925f182f0e07fe5b223b"

MESSAGES: dict[str, dict[str, Any]] = {
    "wa_inbound_text_courier.txt": {
        "kind": "text",
        "text": "Msg",
        "address": "+14133881111",
        "extra": {"channel_prefix": "whatsapp"},
    },
    "wa_inbound_button_text_courier.txt": {
        "kind": "button",
        "text": "Confirm",
        "address": "+14133881111",
        "extra": {"body": "Msg"},
    },
    "wa_inbound_external_user_id_bsuid_courier.txt": {
        "address": "+14133881111",
        "extra": {"user_id": "US.1234"},
    },
    "wa_inbound_from_is_bsuid_courier.txt": {"address": "US.1234", "extra": {"user_id": "US.1234"}},
    "wa_inbound_location_chatwoot.kv.txt": {
        "kind": "location",
        "provider_message_id": "SMxx",
        "address": "+12345",
        "text": "Location: 12.160894393921, 75.265205383301",
        "extra": {"latitude": 12.160894393921, "longitude": 75.265205383301},
    },
    "sms_inbound_two_media_courier.txt": {
        "kind": "image",
        "text": "Msg",
        "attachments": [("image", "cat.jpg", None), ("image", "dog.jpg", None)],
    },
    "sms_inbound_base64_body_courier.txt": {
        "kind": "text",
        "text": "QmFubm9uIEV4cGxhaW5zIFRoZSBXb3JsZCAuLi4K4oCcVGhlIENhbXAgb2YgdGhlIFNhaW50c+KA",
        "address": "+14133881111",
    },
    "sms_inbound_botbuilder.txt": {
        "kind": "text",
        "text": "Hello",
        "address": "+541138050810",
        "provider_message_id": "SMc56324aa4a31735561b7205472192d68",
    },
}

STATUSES: dict[str, dict[str, Any]] = {
    "status_failed_21610_stop_courier.txt": {
        "status": DeliveryState.FAILED,
        "error_code": "21610",
        "error_message": "The recipient unsubscribed (replied STOP)",
    },
    "status_failed_63018_courier.txt": {"status": DeliveryState.FAILED, "error_code": "63018"},
    "status_read_courier.txt": {"status": DeliveryState.READ, "error_code": None},
    "status_sent_messaging_service_courier.txt": {
        "status": DeliveryState.SENT,
        "provider_message_id": "SM0b6e2697aae04182a9f5b5c7a8994c7f",
    },
}


def _parse(pairs: list[tuple[str, str]]) -> ParseResult:
    return parse_twilio_form(form_params(pairs), channel="wa-twilio", now=NOW)


@pytest.mark.parametrize("path", twilio_files(), ids=lambda p: p.name)
def test_every_fixture_maps(path: Path) -> None:
    pairs = twilio_pairs(path)
    result = _parse(pairs)
    assert result.problems == []
    assert len(result.messages) + len(result.statuses) == 1
    params = dict(pairs)
    for message in result.messages:
        assert message.provider == "twilio" and message.channel == "wa-twilio"
        assert message.provider_message_id == params.get("MessageSid", params.get("SmsSid"))
        assert message.sent_at == NOW  # Twilio sends no timestamp: receive time.
        assert message.contact.address == strip_channel(params["From"])
        assert message.raw == params
    for status in result.statuses:
        assert status.provider_message_id == params["MessageSid"]
        assert status.at == NOW
    assert path.name in MESSAGES or path.name in STATUSES, "add expectations for this fixture"


@pytest.mark.parametrize("name", sorted(MESSAGES), ids=str)
def test_message_expectations(name: str) -> None:
    expected: dict[str, Any] = {
        "provider_message_id": SID,
        "kind": "text",
        "text": "Msg",
        "reply_to": None,
        "display_name": None,
        "attachments": [],
        **MESSAGES[name],
    }
    message = _parse(twilio_pairs(TWILIO_DIR / name)).messages[0]
    for key, value in expected.items():
        if key == "address":
            assert message.contact.address == value
        elif key == "display_name":
            assert message.contact.display_name == value
        elif key == "attachments":
            got = [(a.kind, a.url, a.mime_type) for a in message.attachments]
            assert got == value
        elif key == "extra":
            for field, v in value.items():
                assert message.extra.get(field) == v, field
        else:
            assert getattr(message, key) == value, key


@pytest.mark.parametrize("name", sorted(STATUSES), ids=str)
def test_status_expectations(name: str) -> None:
    expected = {"provider_message_id": SID, "closes_window": False, **STATUSES[name]}
    result = _parse(twilio_pairs(TWILIO_DIR / name))
    assert not result.messages
    for key, value in expected.items():
        assert getattr(result.statuses[0], key) == value, key


def test_whatsapp_extras() -> None:
    """The WhatsApp-only params of PROTOCOLS.md 1.1 (profile, reply, media types, referral)."""
    pairs = [
        ("MessageSid", "MM1"),
        ("From", "whatsapp:+5511999990000"),
        ("To", "whatsapp:+14155238886"),
        ("ProfileName", "Ana"),
        ("WaId", "5511999990000"),
        ("Body", "look"),
        ("NumMedia", "2"),
        ("MediaUrl0", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl1", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2"),
        ("MediaContentType1", "application/pdf"),
        ("OriginalRepliedMessageSid", "SMquoted"),
        ("OriginalRepliedMessageSender", "whatsapp:+14155238886"),
        ("FrequentlyForwarded", "true"),
        ("ReferralNumMedia", "0"),
        ("ReferralSourceId", "ad-1"),
        ("ReferralCtwaClid", "clid"),
        ("ChannelMetadata", '{"type":"whatsapp","data":{"context":{"ProfileName":"Ana"}}}'),
    ]
    message = _parse(pairs).messages[0]
    assert message.contact.address == "+5511999990000"
    assert message.contact.display_name == "Ana"
    assert message.kind == "image" and message.text == "look"
    assert [(a.kind, a.mime_type) for a in message.attachments] == [
        ("image", "image/jpeg"),
        ("document", "application/pdf"),
    ]
    assert message.reply_to == "SMquoted"
    assert message.extra["quoted_from"] == "+14155238886"
    assert message.extra["frequently_forwarded"] is True
    assert message.extra["referral"] == {"SourceId": "ad-1", "CtwaClid": "clid"}
    assert message.extra["channel_metadata"]["type"] == "whatsapp"
    assert message.extra["wa_id"] == "5511999990000"


def test_interactive_and_location_with_label() -> None:
    interactive = _parse(
        [
            ("MessageSid", "SM2"),
            ("From", "whatsapp:+1"),
            ("MessageType", "interactive"),
            ("ButtonText", "Konfirmasi"),
            ("ButtonPayload", "confirm-1"),
        ]
    ).messages[0]
    assert (interactive.kind, interactive.text) == ("interactive", "Konfirmasi")
    assert interactive.extra["payload"] == "confirm-1"
    location = _parse(
        [
            ("MessageSid", "SM3"),
            ("From", "whatsapp:+1"),
            ("Latitude", "1.5"),
            ("Longitude", "-2"),
            ("Label", "Shop"),
            ("Address", "Main St"),
        ]
    ).messages[0]
    assert location.kind == "location"
    assert location.text == "Shop, Main St (1.5, -2.0)"


def test_window_closed_status() -> None:
    status = _parse(
        [("MessageSid", "SM4"), ("MessageStatus", "undelivered"), ("ErrorCode", "63016")]
    ).statuses[0]
    assert status.status == DeliveryState.FAILED
    assert status.closes_window and status.error_code == "63016"


def test_unknown_status_is_a_problem_not_an_error() -> None:
    result = _parse([("MessageSid", "SM5"), ("MessageStatus", "teleported")])
    assert not result.statuses and "teleported" in result.problems[0].reason


@pytest.mark.parametrize(
    "pairs",
    [
        [("From", "whatsapp:+1"), ("Body", "x")],
        [("MessageSid", "SM6")],
        [("MessageStatus", "read")],
        # no sender after the channel prefix: every such message would share one contact
        [("MessageSid", "SM7"), ("From", "whatsapp:"), ("Body", "x")],
        [("MessageSid", "SM8"), ("From", "whatsapp:   "), ("Body", "x")],
        [("MessageSid", "SM9"), ("From", ""), ("Body", "x")],
    ],
)
def test_malformed(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(MalformedPayload):
        _parse(pairs)
