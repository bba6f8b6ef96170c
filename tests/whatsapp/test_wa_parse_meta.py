"""Every Meta fixture maps to normalized messages/statuses (parametrized over the directory,
so a new fixture file is covered by the generic checks the moment it is added)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.model import DeliveryState
from plugins.whatsapp.meta_parse import parse_meta_body, parse_meta_payload
from plugins.whatsapp.parsed import MalformedPayload, ParseResult
from tests.whatsapp.support import META_DIR, NOW, meta_files

NAME = "Test Name"
PHONE = "+972987654321"
ALL = "__all__"

# Per fixture: what the first message (or status) must look like. Keys are InboundMessage
# fields, plus `attachment` (fields of attachments[0]) and `extra` (a subset of extra).
MESSAGES: dict[str, dict[str, Any]] = {
    "docs_overview_text.json": {
        "kind": "text",
        "provider_message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        "text": "Does it come in another color?",
        "address": "+16505551234",
        "display_name": "Sheena Nelson",
        "sent_at": 1749416383,
    },
    "msg_text.json": {
        "kind": "text",
        "text": "Body Text",
        "extra": {"user_id": "US.13491208655302741918"},
    },
    "msg_image.json": {
        "kind": "image",
        "text": None,
        "attachment": {
            "kind": "image",
            "media_id": "65463453",
            "url": None,
            "mime_type": "image/jpeg",
            "sha256": "4654+8g=",
        },
    },
    "msg_image_with_url.json": {
        "kind": "image",
        "attachment": {
            "media_id": "65463453",
            "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=65463453&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw",
        },
    },
    "msg_video_forwarded.json": {
        "kind": "video",
        "text": "caption",
        "reply_to": None,
        "attachment": {
            "kind": "video",
            "media_id": "765756756",
            "caption": "caption",
            "mime_type": "video/mp4",
        },
        "extra": {"forwarded": True},
    },
    "msg_document.json": {
        "kind": "document",
        "attachment": {
            "filename": "filename.pdf",
            "caption": "caption",
            "mime_type": "application/pdf",
        },
        "extra": {"forwarded": True},
    },
    "msg_audio.json": {
        "kind": "audio",
        "attachment": {"kind": "audio", "mime_type": "audio/ogg; codecs=opus"},
        "extra": {"voice": False},
    },
    "msg_audio_voice.json": {"kind": "audio", "extra": {"voice": True}},
    "msg_sticker_animated.json": {
        "kind": "sticker",
        "attachment": {"kind": "sticker", "mime_type": "image/webp"},
        "extra": {"animated": True},
    },
    "msg_reaction.json": {
        "kind": "reaction",
        "text": "\U0001f62e",
        "updates": "wamid.yzxyzx=",
        "wakes_conversation": False,
    },
    "msg_reaction_removed.json": {
        "kind": "reaction",
        "text": "",
        "updates": "wamid.yzxyzx=",
        "extra": {"removed": True},
        "wakes_conversation": False,
    },
    "msg_location_named.json": {
        "kind": "location",
        "text": "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025 (37.4611978, -122.2164385)",
        "extra": {
            "latitude": 37.4611978,
            "longitude": -122.2164385,
            "name": "Facebook HQ",
            "address": "1 Hacker Way, Menlo Park, CA 94025",
        },
    },
    "msg_location_current.json": {
        "kind": "location",
        "text": "Location: 12.25089, 43.90539",
        "extra": {"latitude": 12.25089, "forwarded": True},
    },
    "msg_contacts.json": {
        "kind": "contacts",
        "text": "Chandler Bing (+1 555-555-5555); Monica (+1 666-666-6666); "
        "Rachel Green (+1 777-777-7777)",
    },
    "msg_order.json": {
        "kind": "order",
        "text": "Order: 3 x HAMBURGER (30 ILS), 2 x FRENCH_FRIES (35 ILS), 2 x SODA (10 ILS)",
    },
    "msg_unsupported.json": {"kind": "unsupported", "text": None},
    "msg_text_reply_context.json": {
        "kind": "text",
        "text": "replied text",
        "reply_to": "wamid.xyzxyz==",
    },
    "msg_text_frequently_forwarded.json": {"kind": "text", "extra": {"frequently_forwarded": True}},
    "msg_text_ctwa_referral.json": {
        "kind": "text",
        "text": "BODY",
        "provider_message_id": "wamid.ID",
    },
    "msg_interactive_button_reply.json": {
        "kind": "interactive",
        "text": "title",
        "reply_to": "wamid.xyzxyz",
        "extra": {"interactive_type": "button_reply", "reply_id": "callback_data"},
    },
    "msg_interactive_list_reply.json": {
        "kind": "interactive",
        "text": "title",
        "provider_message_id": "wamid.zyzxyz",
        "reply_to": "wamid.xyzxyz",
        "extra": {
            "interactive_type": "list_reply",
            "reply_id": "callback_data",
            "description": "description",
        },
    },
    "msg_button_template_quick_reply.json": {
        "kind": "button",
        "text": "title",
        "reply_to": "wamid.xyzxyz==",
        "provider_message_id": "wamid.xsidjw",
        "extra": {"payload": "callback_data"},
    },
    "msg_interactive_with_value_errors.json": {
        "kind": "unsupported",
        "extra": {"declared_type": "interactive"},
        "reply_to": "wamid.gvwegfretge==",
    },
    "msg_system_user_changed_number.json": {
        "kind": "system",
        "display_name": None,
        "wakes_conversation": False,
        "extra": {"system_type": "user_changed_number", "new_address": "+972912345678"},
    },
    "msg_revoke.json": {
        "kind": "revoke",
        "updates": "<ORIGINAL_WHATSAPP_MESSAGE_ID>",
        "address": "<WHATSAPP_USER_PHONE_NUMBER>",
        "wakes_conversation": False,
    },
    "msg_edit.json": {
        "kind": "edit",
        "text": "Updated image caption",
        "updates": "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=",
        "address": "+16505551234",
        "attachment": {"kind": "image", "media_id": "1234567890"},
        "extra": {"edited_kind": "image"},
        "wakes_conversation": False,
    },
    "courier_wac_duplicate.json": {
        "kind": "text",
        "text": "Hello World",
        "address": "+5678",
        "display_name": "Kerry Fisher",
        "provider_message_id": "external_id",
        "count": 2,
    },
    "courier_wac_hello_from_bsuid.json": {
        "kind": "text",
        "address": "US.1234",
        "display_name": "Kerry Fisher",
        "extra": {"username": "kfisher", "parent_user_id": "US.ENT.5678"},
    },
    "courier_wac_nfm_reply.json": {
        "kind": "interactive",
        "address": "+5678",
        "display_name": "Kerry Fisher",
        "text": "Sent",
        "extra": {
            "interactive_type": "nfm_reply",
            "flow_response": {"flow_token": "fl0w+t0k3n", "first_name": "Bob", "age": "32"},
        },
    },
}

STATUSES: dict[str, dict[str, Any]] = {
    "status_sent.json": {"status": DeliveryState.SENT, "at": 1698266945},
    "status_delivered.json": {"status": DeliveryState.DELIVERED},
    "status_read.json": {"status": DeliveryState.READ, "at": 1689380458},
    "status_failed.json": {
        "status": DeliveryState.FAILED,
        "error_code": "130472",
        "error_message": "User's number is part of an experiment: Failed to send message "
        "because this user's phone number is part of an experiment",
    },
    "status_sent_biz_opaque_callback_data.json": {"status": DeliveryState.SENT},
    "courier_wac_error_status.json": {
        "status": DeliveryState.FAILED,
        "error_code": "131014",
        "provider_message_id": "external_id",
    },
}

ERRORS_ONLY: dict[str, str] = {"courier_wac_error_errors.json": "0"}


def _parse(path: Path) -> ParseResult:
    return parse_meta_body(path.read_bytes(), channel="wa-cloud", now=NOW)


def _check(item: Any, expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if key == "count":
            continue
        if key == "address":
            assert item.contact.address == value
        elif key == "display_name":
            assert item.contact.display_name == value
        elif key in ("sent_at", "at"):
            assert getattr(item, key).timestamp() == value
        elif key == "attachment":
            for field, v in value.items():
                assert getattr(item.attachments[0], field) == v, field
        elif key == "extra":
            for field, v in value.items():
                assert item.extra.get(field) == v, field
        else:
            assert getattr(item, key) == value, key


@pytest.mark.parametrize("path", meta_files(), ids=lambda p: p.name)
def test_every_fixture_maps(path: Path) -> None:
    result = _parse(path)
    assert result.problems == []
    payload = json.loads(path.read_bytes())
    values = [c["value"] for e in payload["entry"] for c in e["changes"]]
    assert len(result.messages) == sum(len(v.get("messages", [])) for v in values)
    assert len(result.statuses) == sum(len(v.get("statuses", [])) for v in values)
    assert result.messages or result.statuses or result.errors
    raws = [m for v in values for m in v.get("messages", [])]
    for message, raw in zip(result.messages, raws, strict=True):
        assert message.channel == "wa-cloud"
        assert message.channel_type == "whatsapp"
        assert message.provider == "cloud_api"
        assert message.provider_message_id == raw["id"]
        assert message.contact.address
        assert message.sent_at.timestamp() == int(raw["timestamp"])
        assert message.raw == raw
        orjson.dumps(message.raw)
        orjson.dumps(message.extra)
        if raw.get("from", "").isdigit():
            assert message.contact.address == "+" + raw["from"]
        if raw.get("errors"):
            assert message.extra["errors"] == raw["errors"]
        if isinstance(raw.get("context"), dict) and raw["context"].get("id"):
            assert message.reply_to == raw["context"]["id"]
    known = path.name in MESSAGES or path.name in STATUSES or path.name in ERRORS_ONLY
    assert known or not path.name.startswith(("msg_", "status_")), "add expectations"


@pytest.mark.parametrize("name", sorted(MESSAGES), ids=str)
def test_message_expectations(name: str) -> None:
    expected = {
        "address": PHONE,
        "display_name": NAME,
        "reply_to": None,
        "wakes_conversation": True,
        **MESSAGES[name],
    }
    result = _parse(META_DIR / name)
    assert len(result.messages) == expected.get("count", 1)
    _check(result.messages[0], expected)


@pytest.mark.parametrize("name", sorted(STATUSES), ids=str)
def test_status_expectations(name: str) -> None:
    expected = {"provider_message_id": "wamid.xyzxyz", "closes_window": False, **STATUSES[name]}
    result = _parse(META_DIR / name)
    assert len(result.statuses) == 1 and not result.messages
    _check(result.statuses[0], expected)
    assert result.statuses[0].channel == "wa-cloud"


def test_webhook_level_errors() -> None:
    result = _parse(META_DIR / "courier_wac_error_errors.json")
    assert not result.messages and not result.statuses
    assert [(e.code, e.title) for e in result.errors] == [
        ("0", "We were unable to authenticate the app user")
    ]
    value_errors = _parse(META_DIR / "msg_interactive_with_value_errors.json")
    assert value_errors.errors[0].code == "131000"
    assert value_errors.errors[0].details == "Unsupported webhook payload"
    assert value_errors.messages[0].extra["errors"][0]["code"] == 131000


def _status_payload(status: dict[str, Any]) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": "1"},
        "statuses": [status],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "w", "changes": [{"field": "messages", "value": value}]}],
    }


def test_window_closed_status() -> None:
    status = {
        "id": "wamid.out",
        "status": "failed",
        "timestamp": "1700000000",
        "errors": [{"code": 131047, "title": "Re-engagement message"}],
    }
    result = parse_meta_payload(_status_payload(status), channel="c", now=NOW)
    assert result.statuses[0].closes_window
    assert result.statuses[0].error_code == "131047"
    assert result.statuses[0].error_message == "Re-engagement message"


def test_played_and_unknown_statuses() -> None:
    played = parse_meta_payload(
        _status_payload({"id": "w1", "status": "played"}), channel="c", now=NOW
    )
    assert played.statuses[0].status == DeliveryState.READ
    assert played.statuses[0].at == NOW
    unknown = parse_meta_payload(
        _status_payload({"id": "w1", "status": "teleported"}), channel="c", now=NOW
    )
    assert not unknown.statuses and "teleported" in unknown.problems[0].reason


def test_batch_with_bad_items_keeps_the_rest() -> None:
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    value = payload["entry"][0]["changes"][0]["value"]
    image = json.loads((META_DIR / "msg_image.json").read_bytes())["entry"][0]["changes"][0][
        "value"
    ]
    value["messages"] = [
        "not an object",
        {"type": "text", "from": "1", "text": {"body": "no id"}},
        value["messages"][0],
        {"id": "wamid.bad", "from": "1", "type": "text", "text": "not an object"},
        {"id": "wamid.badloc", "from": "1", "type": "location", "location": {}},
        image["messages"][0] | {"id": "wamid.image"},
    ]
    value["statuses"] = [{"status": "read"}, {"id": "wamid.s", "status": "read", "timestamp": "1"}]
    payload["entry"].append({"id": "x", "changes": "nope"})
    payload["entry"].append({"id": "y", "changes": [{"field": "account_update", "value": {}}]})
    result = parse_meta_payload(payload, channel="c", now=NOW)
    assert [m.provider_message_id for m in result.messages] == [
        "wamid.xyzxyz",
        "wamid.bad",
        "wamid.badloc",
        "wamid.image",
    ]
    # A known type whose object cannot be read is kept, as unsupported, with why: skipped, it
    # was lost (Meta does not send it again). Only what cannot be a message at all is skipped.
    for unreadable in result.messages[1:3]:
        assert unreadable.kind == "unsupported" and unreadable.extra["unreadable"]
        assert unreadable.raw["type"] == unreadable.extra["declared_type"]
    assert [s.provider_message_id for s in result.statuses] == ["wamid.s"]
    wheres = [p.where for p in result.problems]
    assert wheres == [
        "entry[0].changes[0].messages[0]",
        "entry[0].changes[0].messages[1]",
        "entry[0].changes[0].statuses[0]",
        "entry[1]",
        "entry[2].changes[0]",
    ]


def test_a_broken_contact_entry_costs_the_name_not_the_message() -> None:
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    value = payload["entry"][0]["changes"][0]["value"]
    message = value["messages"][0]
    value["contacts"] = [{"profile": "x", "wa_id": message["from"]}]
    result = parse_meta_payload(payload, channel="c", now=NOW)
    assert [m.provider_message_id for m in result.messages] == [message["id"]]
    assert result.messages[0].contact.address == "+" + message["from"]
    assert result.messages[0].contact.display_name is None
    assert result.problems == []


def test_a_sender_that_is_not_text_is_a_malformed_item() -> None:
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    value = payload["entry"][0]["changes"][0]["value"]
    good = value["messages"][0]
    value["messages"] = [good | {"id": "wamid.obj", "from": {"x": 1}}, good]
    result = parse_meta_payload(payload, channel="c", now=NOW)
    assert [m.provider_message_id for m in result.messages] == [good["id"]]
    assert [p.where for p in result.problems] == ["entry[0].changes[0].messages[0]"]
    assert "`from` is not a string" in result.problems[0].reason


@pytest.mark.parametrize("context", ["not an object", ["a", "list"], 42])
def test_a_broken_context_costs_the_quote_not_the_message(context: object) -> None:
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["context"] = context
    result = parse_meta_payload(payload, channel="c", now=NOW)
    [kept] = result.messages
    assert kept.text == message["text"]["body"] and kept.reply_to is None
    assert "context" in kept.extra["context_error"]
    assert result.problems == []


def test_foreign_phone_number_is_skipped() -> None:
    path = META_DIR / "msg_text.json"
    mine = parse_meta_body(path.read_bytes(), channel="c", now=NOW, phone_number_id="1122334455667")
    assert len(mine.messages) == 1
    other = parse_meta_body(path.read_bytes(), channel="c", now=NOW, phone_number_id="999")
    assert not other.messages and "1122334455667" in other.problems[0].reason


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": {}}',
    ],
)
def test_malformed_envelopes(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_meta_body(body, channel="c", now=NOW)


def test_other_objects_are_ignored() -> None:
    result = parse_meta_body(b'{"object": "page", "entry": []}', channel="c", now=NOW)
    assert not result.messages and result.problems


def test_unknown_type_is_kept_as_unsupported() -> None:
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    msg = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    msg.update(type="hologram", hologram={"x": 1})
    result = parse_meta_payload(payload, channel="c", now=NOW)
    assert result.messages[0].kind == "unsupported"
    assert result.messages[0].extra["declared_type"] == "hologram"


def test_only_ascii_digits_make_a_phone_number() -> None:
    """`str.isdigit` also says yes to superscripts and Arabic-Indic digits: not phone numbers."""
    from plugins.whatsapp.parsed import e164

    assert e164(" 5511999990000 ") == "+5511999990000"
    assert e164("55²") == "55²"
    assert e164("١٢٣") == "١٢٣"
    assert e164("BR.1234abcd") == "BR.1234abcd"


def test_a_status_carries_the_callback_data_our_send_put_there() -> None:
    """Meta echoes `biz_opaque_callback_data` in the status (the real payload): our sends put
    our message id there, so the report can find its message (see Ingestor._correlate)."""
    payload = json.loads((META_DIR / "status_sent_biz_opaque_callback_data.json").read_bytes())
    status = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    [parsed] = parse_meta_payload(payload, channel="c", now=NOW).statuses
    assert parsed.message_id == status["biz_opaque_callback_data"]
    [plain] = parse_meta_body(
        (META_DIR / "status_sent.json").read_bytes(), channel="c", now=NOW
    ).statuses
    assert plain.message_id is None


@pytest.mark.parametrize("stamp", ["0", "-5", 0, "-1700000000"])
def test_a_timestamp_of_zero_or_less_is_no_time(stamp: object) -> None:
    """Read as 1970, it opened the conversation with its window long over: inactive, and the
    customer never queued. Like an unreadable one, it stands for the time we received it."""
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = stamp
    (message,) = parse_meta_payload(payload, channel="c", now=NOW).messages
    assert message.sent_at == NOW


def test_a_text_whose_body_is_an_object_is_unsupported_not_python() -> None:
    """Hostile-content audit: `text.body: {"a": 1}` was stored as the text `{'a': 1}`."""
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"] = {"body": {"a": 1}}
    (message,) = parse_meta_payload(payload, channel="c", now=NOW).messages
    assert (message.kind, message.text) == ("unsupported", None)
    assert message.extra["unreadable"] == "`text.body` is not text"


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ({"type": "contacts", "contacts": [1, 2]}, "no contact card is an object"),
        ({"type": "text"}, "`text` is missing"),
    ],
)
def test_a_message_with_nothing_readable_of_its_kind_is_unsupported(
    shape: dict[str, Any], reason: str
) -> None:
    """Audit: cards that were none of them objects were stored as an empty `contacts`
    message, and a text without its `text` as a text with no body."""
    payload = json.loads((META_DIR / "msg_text.json").read_bytes())
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message.update(shape)
    (parsed,) = parse_meta_payload(payload, channel="c", now=NOW).messages
    assert (parsed.kind, parsed.extra["unreadable"]) == ("unsupported", reason)
