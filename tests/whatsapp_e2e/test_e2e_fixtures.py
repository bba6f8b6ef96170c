"""Every real provider payload in shared/fixtures, posted signed to the real gateway, and read
back through the agent API: what the provider sent is what agents and integrators see.

The expectations are written out by hand from the fixture files (not computed with the
plugin's parser), so a parser change that alters what agents see fails here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.whatsapp.support import (
    META_DIR,
    TWILIO_DIR,
    fixture_bytes,
    meta_files,
    meta_phone_number_id,
    twilio_body,
    twilio_files,
    twilio_pairs,
)
from tests.whatsapp_e2e.conftest import META, TWILIO, WaFactory, WaGateway

ANA_PHONE = "+972987654321"
WABA_IDS = {"user_id": "US.13491208655302741918", "parent_user_id": "US.ENT.11815799212886844830"}


@dataclass(frozen=True)
class Want:
    """What agents must see of one stored inbound message."""

    kind: str
    text: str | None
    address: str = ANA_PHONE
    name: str | None = "Test Name"
    reply_to: str | None = None
    updates: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def image(media_id: str, mime: str, **more: Any) -> dict[str, Any]:
    return {"media_id": media_id, "mime_type": mime, **more}


META_INBOUND: dict[str, Want | None] = {
    # Two copies of one wamid in one POST (courier): stored once.
    "courier_wac_duplicate.json": Want("text", "Hello World", "+5678", "Kerry Fisher"),
    # Only `value.errors[]`: acknowledged, logged, nothing to store.
    "courier_wac_error_errors.json": None,
    "courier_wac_hello_from_bsuid.json": Want("text", "Hello World", "US.1234", "Kerry Fisher"),
    "courier_wac_nfm_reply.json": Want(
        "interactive", "Sent", "+5678", "Kerry Fisher", extra={"interactive_type": "nfm_reply"}
    ),
    "docs_overview_text.json": Want(
        "text", "Does it come in another color?", "+16505551234", "Sheena Nelson"
    ),
    "msg_audio.json": Want(
        "audio",
        None,
        attachments=({"kind": "audio", **image("1234567890987654321", "audio/ogg; codecs=opus")},),
        extra=WABA_IDS,
    ),
    "msg_audio_voice.json": Want(
        "audio",
        None,
        attachments=({"kind": "audio", **image("1234567890987654321", "audio/ogg; codecs=opus")},),
        extra={"voice": True},
    ),
    "msg_button_template_quick_reply.json": Want(
        "button", "title", reply_to="wamid.xyzxyz==", extra={"payload": "callback_data"}
    ),
    "msg_contacts.json": Want(
        "contacts",
        "Chandler Bing (+1 555-555-5555); Monica (+1 666-666-6666); Rachel Green (+1 777-777-7777)",
    ),
    "msg_document.json": Want(
        "document",
        "caption",
        attachments=(
            {
                "kind": "document",
                **image("1234567890987654321", "application/pdf"),
                "caption": "caption",
                "filename": "filename.pdf",
            },
        ),
    ),
    "msg_edit.json": Want(
        "edit",
        "Updated image caption",
        "+16505551234",
        updates="wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA=",
        attachments=(
            {
                "kind": "image",
                "url": "https://media.example.com/updated-image.jpg",
                **image("1234567890", "image/jpeg"),
            },
        ),
        extra={"edited_kind": "image"},
    ),
    "msg_image.json": Want(
        "image", None, attachments=({"kind": "image", **image("65463453", "image/jpeg")},)
    ),
    "msg_image_with_url.json": Want(
        "image",
        None,
        attachments=(
            {
                "kind": "image",
                **image("65463453", "image/jpeg"),
                "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/"
                "?mid=65463453&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw",
            },
        ),
    ),
    "msg_interactive_button_reply.json": Want(
        "interactive", "title", reply_to="wamid.xyzxyz", extra={"reply_id": "callback_data"}
    ),
    "msg_interactive_list_reply.json": Want(
        "interactive",
        "title",
        reply_to="wamid.xyzxyz",
        extra={"reply_id": "callback_data", "description": "description"},
    ),
    "msg_interactive_with_value_errors.json": Want(
        "unsupported", None, reply_to="wamid.gvwegfretge=="
    ),
    "msg_location_current.json": Want(
        "location",
        "Location: 12.25089, 43.90539",
        extra={"latitude": 12.25089, "longitude": 43.90539},
    ),
    "msg_location_named.json": Want(
        "location",
        "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025 (37.4611978, -122.2164385)",
        extra={"name": "Facebook HQ", "forwarded": True},
    ),
    "msg_order.json": Want(
        "order", "Order: 3 x HAMBURGER (30 ILS), 2 x FRENCH_FRIES (35 ILS), 2 x SODA (10 ILS)"
    ),
    "msg_reaction.json": Want("reaction", "😮", updates="wamid.yzxyzx="),
    "msg_reaction_removed.json": Want(
        "reaction", "", updates="wamid.yzxyzx=", extra={"removed": True}
    ),
    "msg_revoke.json": Want(
        "revoke",
        None,
        "<WHATSAPP_USER_PHONE_NUMBER>",
        updates="<ORIGINAL_WHATSAPP_MESSAGE_ID>",
    ),
    "msg_sticker_animated.json": Want(
        "sticker",
        None,
        attachments=({"kind": "sticker", **image("1234567890987654321", "image/webp")},),
        extra={"animated": True},
    ),
    "msg_system_user_changed_number.json": Want(
        "system",
        "User A changed from 972987654321 to 972912345678",
        name=None,
        extra={"system_type": "user_changed_number", "new_address": "+972912345678"},
    ),
    "msg_text.json": Want("text", "Body Text", extra=WABA_IDS),
    "msg_text_ctwa_referral.json": Want("text", "BODY"),
    "msg_text_frequently_forwarded.json": Want(
        "text", "text forwarded many times", extra={"frequently_forwarded": True}
    ),
    "msg_text_reply_context.json": Want("text", "replied text", reply_to="wamid.xyzxyz=="),
    "msg_unsupported.json": Want("unsupported", None),
    "msg_video_forwarded.json": Want(
        "video",
        "caption",
        attachments=({"kind": "video", **image("765756756", "video/mp4"), "caption": "caption"},),
        extra={"forwarded": True},
    ),
}

# status fixture -> (provider message id, resulting status, error code)
META_STATUS: dict[str, tuple[str, str, str | None]] = {
    "courier_wac_error_status.json": ("external_id", "failed", "131014"),
    "status_delivered.json": ("wamid.xyzxyz", "delivered", None),
    "status_failed.json": ("wamid.xyzxyz", "failed", "130472"),
    "status_read.json": ("wamid.xyzxyz", "read", None),
    "status_sent.json": ("wamid.xyzxyz", "sent", None),
    "status_sent_biz_opaque_callback_data.json": ("wamid.xyzxyz", "sent", None),
}

TWILIO_INBOUND: dict[str, Want] = {
    "sms_inbound_base64_body_courier.txt": Want(
        # The body is base64 text, kept as the customer sent it (with `%2B` decoded to `+`).
        "text",
        "QmFubm9uIEV4cGxhaW5zIFRoZSBXb3JsZCAuLi4K4oCcVGhlIENhbXAgb2YgdGhlIFNhaW50c+KA",
        "+14133881111",
        None,
    ),
    "sms_inbound_botbuilder.txt": Want("text", "Hello", "+541138050810", None),
    "sms_inbound_two_media_courier.txt": Want(
        "image",
        "Msg",
        "+14133881111",
        None,
        attachments=({"kind": "image", "url": "cat.jpg"}, {"kind": "image", "url": "dog.jpg"}),
    ),
    "wa_inbound_button_text_courier.txt": Want("button", "Confirm", "+14133881111", None),
    "wa_inbound_external_user_id_bsuid_courier.txt": Want(
        "text", "Msg", "+14133881111", None, extra={"user_id": "US.1234"}
    ),
    "wa_inbound_from_is_bsuid_courier.txt": Want("text", "Msg", "US.1234", None),
    "wa_inbound_location_chatwoot.kv.txt": Want(
        "location",
        "Location: 12.160894393921, 75.265205383301",
        "+12345",
        None,
        extra={"latitude": 12.160894393921, "longitude": 75.265205383301},
    ),
    "wa_inbound_text_courier.txt": Want("text", "Msg", "+14133881111", None),
}

TWILIO_STATUS: dict[str, tuple[str, str, str | None]] = {
    "status_failed_21610_stop_courier.txt": (
        "SMe287d7109a5a925f182f0e07fe5b223b",
        "failed",
        "21610",
    ),
    "status_failed_63018_courier.txt": ("SMe287d7109a5a925f182f0e07fe5b223b", "failed", "63018"),
    "status_read_courier.txt": ("SMe287d7109a5a925f182f0e07fe5b223b", "read", None),
    "status_sent_messaging_service_courier.txt": (
        "SM0b6e2697aae04182a9f5b5c7a8994c7f",
        "sent",
        None,
    ),
}


def test_every_fixture_is_covered() -> None:
    assert {p.name for p in meta_files()} == set(META_INBOUND) | set(META_STATUS)
    assert {p.name for p in twilio_files()} == set(TWILIO_INBOUND) | set(TWILIO_STATUS)


def meta_raw_messages(path: Path) -> list[dict[str, Any]]:
    payload = orjson.loads(path.read_bytes())
    return [
        m
        for entry in payload["entry"]
        for change in entry["changes"]
        for m in change["value"].get("messages", [])
    ]


async def check_seen(wa: WaGateway, event: dict[str, Any], want: Want, raw: Any) -> None:
    """The message as the event log, the preview and the inbox show it."""
    message = event["message"]
    assert message["direction"] == "in" and message["status"] is None
    assert message["kind"] == want.kind
    assert message["text"] == want.text
    assert message["contact"] == {"address": want.address, "display_name": want.name}
    assert message["reply_to"] == want.reply_to
    assert message["updates"] == want.updates
    assert len(message["attachments"]) == len(want.attachments)
    for seen, wanted in zip(message["attachments"], want.attachments, strict=True):
        assert {k: seen[k] for k in wanted} == wanted
    assert {k: message["extra"].get(k) for k in want.extra} == want.extra
    assert message["raw"] == raw  # the provider's payload, kept for audit
    conversation = await wa.conversation(message["conversation_id"])
    assert conversation["channel_type"] == "whatsapp"
    assert conversation["contact"]["address"] == want.address
    preview = {k: v for k, v in message.items() if k != "raw"}
    assert preview in conversation["messages"]
    listed = await wa.inbox(conversation["state"])
    assert conversation["id"] in [c["id"] for c in listed]


@pytest.mark.parametrize("name", sorted(META_INBOUND))
async def test_meta_inbound_fixture(name: str, make_wa: WaFactory) -> None:
    path = META_DIR / name
    wa = await make_wa(phone_number_id=meta_phone_number_id(path))
    resp = await wa.post_meta(fixture_bytes(path))
    assert resp.status == 200 and await resp.json() == {}
    received = await wa.received()
    want = META_INBOUND[name]
    if want is None:
        assert received == [] and (await wa.counts())["messages"] == 0
        return
    (event,) = received
    assert event["message"]["channel"] == META
    assert event["message"]["provider"] == "cloud_api"
    await check_seen(wa, event, want, meta_raw_messages(path)[0])
    assert (await wa.counts())["messages"] == 1


@pytest.mark.parametrize("name", sorted(TWILIO_INBOUND))
async def test_twilio_inbound_fixture(name: str, make_wa: WaFactory) -> None:
    path = TWILIO_DIR / name
    wa = await make_wa()
    pairs = twilio_pairs(path)
    resp = await wa.post_twilio(pairs, body=twilio_body(path))
    assert resp.status == 200 and "<Response/>" in await resp.text()
    (event,) = await wa.received()
    assert event["message"]["channel"] == TWILIO
    assert event["message"]["provider"] == "twilio"
    await check_seen(wa, event, TWILIO_INBOUND[name], dict(pairs))


@pytest.mark.parametrize("name", sorted(META_STATUS))
async def test_meta_status_fixture_moves_our_message(name: str, make_wa: WaFactory) -> None:
    path = META_DIR / name
    wamid, state, code = META_STATUS[name]
    wa = await make_wa(phone_number_id=meta_phone_number_id(path))
    conversation_id = await wa.open_conversation(META, pid="wamid.IN1")
    message_id = await wa.send_text(conversation_id, META, provider_id=wamid)
    resp = await wa.post_meta(fixture_bytes(path))
    assert resp.status == 200
    await wa.gw.settle()
    await check_status(wa, conversation_id, message_id, state, code)


@pytest.mark.parametrize("name", sorted(TWILIO_STATUS))
async def test_twilio_status_fixture_moves_our_message(name: str, make_wa: WaFactory) -> None:
    path = TWILIO_DIR / name
    sid, state, code = TWILIO_STATUS[name]
    wa = await make_wa()
    conversation_id = await wa.open_conversation(TWILIO, pid="SMin1")
    message_id = await wa.send_text(conversation_id, TWILIO, provider_id=sid)
    resp = await wa.post_twilio(twilio_pairs(path), body=twilio_body(path))
    assert resp.status == 200
    await wa.gw.settle()
    await check_status(wa, conversation_id, message_id, state, code)


async def check_status(
    wa: WaGateway, conversation_id: str, message_id: str, state: str, code: str | None
) -> None:
    message = await wa.message(conversation_id, message_id)
    assert message["direction"] == "out"
    assert (message["status"], message["error_code"]) == (state, code)
    if code is not None:
        assert message["error_message"]
    statuses = [
        e["message"]
        for e in await wa.events()
        if e["type"] == "message.status" and e["message"]["id"] == message_id
    ]
    assert statuses and statuses[-1]["status"] == state
