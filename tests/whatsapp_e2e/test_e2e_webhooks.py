"""Webhook edge cases through the real gateway: refused signatures store nothing, the Meta
handshake, provider retries and concurrent duplicates, batches with a broken item, statuses
for messages nobody knows."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.metrics_text import sample
from tests.whatsapp.support import (
    META_APP_SECRET,
    META_DIR,
    META_TOKEN,
    META_VERIFY,
    TWILIO_DIR,
    TWILIO_TOKEN,
    fixture_bytes,
    meta_sign,
    twilio_body,
    twilio_pairs,
    twilio_sign,
)
from tests.whatsapp_e2e.conftest import (
    META,
    TWILIO,
    TWILIO_URL,
    WaFactory,
    WaGateway,
    meta_envelope,
    meta_messages,
    meta_status,
    meta_statuses,
    meta_text,
    meta_value,
    twilio_inbound,
)

SECRETS = (TWILIO_TOKEN, META_TOKEN, META_APP_SECRET, META_VERIFY)
NOW_TS = 1795590000  # 2026-11-25 about 05:00 UTC, before the manual clock's 07:00


def no_secrets(logs: Sequence[Mapping[str, Any]]) -> None:
    text = repr(logs)
    for secret in SECRETS:
        assert secret not in text


async def snapshot(wa: WaGateway) -> tuple[dict[str, int], list[dict[str, Any]]]:
    return await wa.counts(), await wa.events()


# --- refused signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("forgery", ["unsigned", "other_secret", "tampered", "not_hex", "sha1"])
async def test_meta_forged_webhook_stores_nothing(forgery: str, wa: WaGateway) -> None:
    body = fixture_bytes(META_DIR / "msg_text.json")
    signature: str | None = {
        "unsigned": None,
        "other_secret": meta_sign(body, "not-the-app-secret"),
        "tampered": meta_sign(body),
        "not_hex": "sha256=zz",
        "sha1": "sha1=" + meta_sign(body).removeprefix("sha256=")[:40],
    }[forgery]
    if forgery == "tampered":
        body = body.replace(b"Body Text", b"Pwned Text")
    before = await snapshot(wa)
    with capture_logs() as logs:
        resp = await wa.post_meta(body, signature=signature)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert await snapshot(wa) == before
    assert [e["channel"] for e in logs if e["event"] == "webhook.signature_invalid"] == [META]
    no_secrets(logs)


async def test_a_compressed_webhook_is_refused_unread_and_stores_nothing(wa: WaGateway) -> None:
    """A gzip body (here a small bomb: its signature even matches the compressed bytes) is
    refused with 415 before anything inflates or verifies it; a log line says why."""
    body = gzip.compress(fixture_bytes(META_DIR / "msg_text.json") + b" " * 20_000_000)
    before = await snapshot(wa)
    with capture_logs() as logs:
        resp = await wa.client.post(
            f"/webhooks/{META}",
            data=body,
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "X-Hub-Signature-256": meta_sign(body),
            },
        )
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert await snapshot(wa) == before
    refused = [e for e in logs if e["event"] == "http.refused"]
    assert [(e["status"], e["code"]) for e in refused] == [(415, "unsupported_media_type")]
    # Counted as the webhooks it answered are (README audit: refused before its handler, it
    # was not); a channel name nobody configured adds no series.
    metric = "gateway_webhooks_total"
    assert await sample(wa.client, metric, channel=META, outcome="http_415") == 1
    resp = await wa.client.post("/webhooks/nobody", data=body, headers={"Content-Encoding": "gzip"})
    assert resp.status == 415
    assert await sample(wa.client, metric, channel="nobody", outcome="http_415") == 0


@pytest.mark.parametrize("forgery", ["unsigned", "other_token", "tampered", "other_url"])
async def test_twilio_forged_webhook_stores_nothing(forgery: str, wa: WaGateway) -> None:
    path = TWILIO_DIR / "wa_inbound_text_courier.txt"
    pairs = twilio_pairs(path)
    body = twilio_body(path)
    signature: str | None = {
        "unsigned": None,
        "other_token": twilio_sign(TWILIO_URL, pairs, "not-the-auth-token"),
        "tampered": twilio_sign(TWILIO_URL, pairs),
        # Signed for another channel's URL: a replay against this one must fail.
        "other_url": twilio_sign(TWILIO_URL.replace(TWILIO, META), pairs),
    }[forgery]
    if forgery == "tampered":
        body = body.replace(b"Body=Msg", b"Body=Pwned")
    before = await snapshot(wa)
    with capture_logs() as logs:
        resp = await wa.post_twilio(pairs, body=body, signature=signature)
    assert resp.status == 403
    assert await snapshot(wa) == before
    assert [e["channel"] for e in logs if e["event"] == "webhook.signature_invalid"] == [TWILIO]
    no_secrets(logs)


async def test_forged_status_does_not_move_a_message(wa: WaGateway) -> None:
    conversation_id = await wa.open_conversation(META, pid="wamid.IN1")
    message_id = await wa.send_text(conversation_id, META, provider_id="wamid.OUT1")
    before = await snapshot(wa)
    body = meta_statuses(meta_status("wamid.OUT1", "read", ts=NOW_TS))
    resp = await wa.post_meta(body, signature=meta_sign(body, "guess"))
    assert resp.status == 403
    assert await snapshot(wa) == before
    assert (await wa.message(conversation_id, message_id))["status"] == "queued"


async def test_meta_verification_handshake(wa: WaGateway) -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.challenge": "1158201444",
        "hub.verify_token": META_VERIFY,
    }
    resp = await wa.client.get(f"/webhooks/{META}", params=query)
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert await resp.text() == "1158201444"
    for bad in ({"hub.verify_token": "guess"}, {"hub.mode": "unsubscribe"}):
        with capture_logs() as logs:
            resp = await wa.client.get(f"/webhooks/{META}", params={**query, **bad})
        assert resp.status == 403
        assert "1158201444" not in await resp.text()
        no_secrets(logs)
    resp = await wa.client.get(f"/webhooks/{TWILIO}", params=query)
    assert resp.status == 405


# --- retries and duplicates ------------------------------------------------------------------


async def test_provider_retry_is_not_a_second_message(wa: WaGateway) -> None:
    meta_body = fixture_bytes(META_DIR / "msg_text.json")
    twilio_path = TWILIO_DIR / "wa_inbound_text_courier.txt"
    for _ in range(3):  # the first delivery and two re-deliveries
        assert (await wa.post_meta(meta_body)).status == 200
        resp = await wa.post_twilio(twilio_pairs(twilio_path), body=twilio_body(twilio_path))
        assert resp.status == 200
    received = await wa.received()
    assert sorted(e["message"]["provider_message_id"] for e in received) == [
        "SMe287d7109a5a925f182f0e07fe5b223b",
        "wamid.xyzxyz",
    ]
    assert (await wa.counts())["messages"] == 2


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_concurrent_duplicates_store_one_message(channel: str, wa: WaGateway) -> None:
    if channel == META:
        body = meta_messages([meta_text("wamid.DUP", "Hola, una vez", ts=NOW_TS)])
        posts = [wa.post_meta(body) for _ in range(10)]
    else:
        pairs = twilio_inbound("SMdup", "Hola, una vez")
        posts = [wa.post_twilio(pairs) for _ in range(10)]
    answers = await asyncio.gather(*posts)
    assert [r.status for r in answers] == [200] * 10
    events = await wa.events()
    assert [e["type"] for e in events] == ["conversation.created", "message.received"]
    counts = await wa.counts()
    assert counts["messages"] == 1 and counts["conversations"] == 1
    (waiting,) = await wa.inbox("waiting")
    assert waiting["preview"] == "Hola, una vez" and waiting["channel"] == channel


async def test_concurrent_messages_of_one_new_contact_share_a_conversation(
    wa: WaGateway,
) -> None:
    bodies = [
        meta_messages([meta_text(f"wamid.C{i}", f"parte {i}", ts=NOW_TS + i)]) for i in range(10)
    ]
    answers = await asyncio.gather(*(wa.post_meta(b) for b in bodies))
    assert [r.status for r in answers] == [200] * 10
    conversations = {e["message"]["conversation_id"] for e in await wa.received()}
    assert len(conversations) == 1
    (conversation_id,) = conversations
    conversation = await wa.conversation(conversation_id)
    assert sorted(m["text"] for m in conversation["messages"]) == [f"parte {i}" for i in range(10)]


# --- batches ---------------------------------------------------------------------------------


async def test_batched_payload_with_a_broken_item(wa: WaGateway) -> None:
    # Two agent messages already sent to Dora, so the batch's statuses have something to move.
    dora = await wa.open_conversation(META, pid="wamid.D0", phone="+5511000000004")
    out_a = await wa.send_text(dora, META, provider_id="wamid.OUTA")
    out_b = await wa.send_text(dora, META, provider_id="wamid.OUTB")
    image = {
        "from": "5511000000002",
        "id": "wamid.B1",
        "timestamp": str(NOW_TS),
        "type": "image",
        "image": {"id": "m1", "mime_type": "image/png", "caption": "mira"},
    }
    # An image without id or url: nothing to show, but a customer sent it: stored as
    # unsupported (with why), and logged.
    broken = {
        "from": "5511000000001",
        "id": "wamid.BROKEN",
        "timestamp": str(NOW_TS),
        "type": "image",
        "image": {"mime_type": "image/png"},
    }
    body = meta_envelope(
        [
            meta_value(
                messages=[
                    meta_text("wamid.A1", "soy Alba", phone="5511000000001", ts=NOW_TS),
                    broken,
                    image,
                ],
                statuses=[meta_status("wamid.OUTA", "delivered", ts=NOW_TS)],
                contacts=[("5511000000001", "Alba"), ("5511000000002", "Bruno")],
            ),
            meta_value(
                messages=[meta_text("wamid.C1", "soy Carla", phone="5511000000003", ts=NOW_TS)],
                contacts=[("5511000000003", "Carla")],
            ),
        ],
        [
            meta_value(
                statuses=[
                    meta_status("wamid.OUTB", "read", ts=NOW_TS),
                    meta_status("wamid.OUTA", "exploded", ts=NOW_TS),  # unknown status value
                ]
            ),
            # Addressed to another business number: not this channel's to answer.
            meta_value(
                messages=[meta_text("wamid.X1", "wrong number", phone="5511000000009", ts=NOW_TS)],
                phone_number_id="999",
            ),
        ],
    )
    with capture_logs() as logs:
        resp = await wa.post_meta(body)
    assert resp.status == 200
    await wa.gw.settle()
    stored = {
        e["message"]["provider_message_id"]: e["message"]
        for e in await wa.received()
        if e["message"]["provider_message_id"] != "wamid.D0"
    }
    assert sorted(stored) == ["wamid.A1", "wamid.B1", "wamid.BROKEN", "wamid.C1"]
    assert stored["wamid.BROKEN"]["kind"] == "unsupported"
    assert stored["wamid.BROKEN"]["raw"] == broken
    assert stored["wamid.A1"]["contact"] == {"address": "+5511000000001", "display_name": "Alba"}
    assert stored["wamid.B1"]["attachments"][0]["media_id"] == "m1"
    assert stored["wamid.B1"]["text"] == "mira"
    assert stored["wamid.C1"]["contact"]["display_name"] == "Carla"
    assert (await wa.message(dora, out_a))["status"] == "delivered"
    assert (await wa.message(dora, out_b))["status"] == "read"
    skipped = [e for e in logs if e["event"] == "webhook.item_skipped"]
    assert len(skipped) == 2, skipped  # the unknown status value, the other number's message
    (unreadable,) = [e for e in logs if e["event"] == "webhook.item_unreadable"]
    assert unreadable["provider_message_id"] == "wamid.BROKEN"
    waiting = {c["contact"]["address"] for c in await wa.inbox("waiting")}
    assert {"+5511000000001", "+5511000000002", "+5511000000003"} <= waiting


# --- statuses nobody asked for ----------------------------------------------------------------


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_status_for_an_unknown_message_is_acknowledged_and_logged(
    channel: str, wa: WaGateway
) -> None:
    before_messages = (await wa.counts())["messages"]
    with capture_logs() as logs:
        if channel == META:
            resp = await wa.post_meta(meta_statuses(meta_status("wamid.NOBODY", "read", ts=NOW_TS)))
        else:
            path = TWILIO_DIR / "status_read_courier.txt"
            resp = await wa.post_twilio(twilio_pairs(path), body=twilio_body(path))
    assert resp.status == 200
    unknown = [e for e in logs if e["event"] == "ingest.status_unknown_message"]
    assert [e["channel"] for e in unknown] == [channel]
    reports = await sample(
        wa.client,
        "gateway_delivery_reports_total",
        channel=channel,
        status="read",
        outcome="unknown_message",
    )
    assert reports == 1
    assert await wa.events() == []
    assert (await wa.counts())["messages"] == before_messages


async def test_provider_errors_without_items_are_acknowledged(make_wa: WaFactory) -> None:
    wa = await make_wa(phone_number_id="1234567890")
    with capture_logs() as logs:
        resp = await wa.post_meta(fixture_bytes(META_DIR / "courier_wac_error_errors.json"))
    assert resp.status == 200
    assert [e["code"] for e in logs if e["event"] == "whatsapp.provider_error"] == ["0"]
    assert await wa.events() == []


# --- several numbers of one Meta app ------------------------------------------------------------

SECOND_NUMBER = "2233445566778"
OTHER_APP_NUMBER = "3344556677889"
TWO_NUMBERS = f"""
  - {{name: wa-cloud-2, type: whatsapp, provider: cloud_api, phone_number_id: "{SECOND_NUMBER}",
     access_token: ${{WA_TOKEN}}, app_secret: ${{WA_APP_SECRET}}, verify_token: ${{WA_VERIFY}},
     api_base_url: "@GRAPH_BASE@"}}
  - {{name: wa-other-app, type: whatsapp, provider: cloud_api,
     phone_number_id: "{OTHER_APP_NUMBER}", access_token: x, app_secret: another-apps-secret,
     verify_token: y}}"""


async def test_one_app_url_serves_every_number_of_the_app(make_wa: WaFactory) -> None:
    """A Meta app has one webhook URL: the second number's messages and statuses arrive at the
    first number's channel (even in one batch with its own) and must reach the second
    channel, not be acknowledged and dropped. A number of another app (its own secret) or one
    this gateway does not know is still skipped."""
    wa = await make_wa(extra_channels=TWO_NUMBERS)
    body = meta_envelope(
        [
            meta_value(
                messages=[meta_text("wamid.N1", "al primero", phone="5511000000001", ts=NOW_TS)]
            ),
            meta_value(
                messages=[meta_text("wamid.N2", "al segundo", phone="5511000000002", ts=NOW_TS)],
                contacts=[("5511000000002", "Beto")],
                phone_number_id=SECOND_NUMBER,
            ),
            meta_value(
                messages=[meta_text("wamid.N3", "otra app", phone="5511000000003", ts=NOW_TS)],
                phone_number_id=OTHER_APP_NUMBER,
            ),
            meta_value(
                messages=[meta_text("wamid.N4", "nadie", phone="5511000000004", ts=NOW_TS)],
                phone_number_id="999",
            ),
        ]
    )
    with capture_logs() as logs:
        resp = await wa.post_meta(body)
    assert resp.status == 200
    stored = {e["message"]["provider_message_id"]: e["conversation"] for e in await wa.received()}
    assert sorted(stored) == ["wamid.N1", "wamid.N2"]
    assert stored["wamid.N1"]["channel"] == META
    assert stored["wamid.N2"]["channel"] == "wa-cloud-2"
    assert stored["wamid.N2"]["contact"] == {"address": "+5511000000002", "display_name": "Beto"}
    skipped = [e["reason"] for e in logs if e["event"] == "webhook.item_skipped"]
    assert sorted(skipped) == [
        f"addressed to phone_number_id {OTHER_APP_NUMBER}",
        "addressed to phone_number_id 999",
    ]

    # The second number's reply goes out from the second number; its status report comes
    # back through the first number's URL and still moves it.
    second = stored["wamid.N2"]["id"]
    await wa.accept(second)
    sent = await wa.send_text(second, "wa-cloud-2", provider_id="wamid.OUT2")
    assert wa.graph.calls[-1].path.endswith(f"/{SECOND_NUMBER}/messages")
    statuses = meta_envelope(
        [
            meta_value(
                statuses=[meta_status("wamid.OUT2", "read", ts=NOW_TS)],
                phone_number_id=SECOND_NUMBER,
            )
        ]
    )
    assert (await wa.post_meta(statuses)).status == 200
    assert (await wa.message(second, sent))["status"] == "read"


async def test_a_stalled_webhook_body_is_a_408(
    wa: WaGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that never finishes arriving: 408 and the connection closed (the limit is made
    short here; it is 30 s in production)."""
    import gateway.bodies
    from tests.api.test_slow_bodies import LIMIT, stalled

    monkeypatch.setattr(gateway.bodies, "BODY_TIMEOUT", LIMIT)
    server = wa.client.server
    head = b"POST /webhooks/wa-cloud HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=00\r\n"
    answer, closed = await stalled(str(server.host), int(server.port or 0), head)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer and closed


async def test_half_an_emoji_does_not_cost_the_batch(wa: WaGateway) -> None:
    """A lone UTF-16 surrogate escape (half an emoji, cut by a client) is JSON orjson refuses:
    the batch was a 400 at every re-delivery, every message in it lost. It is read, the half
    replaced by U+FFFD, and every message stored."""
    body = meta_envelope(
        [
            meta_value(
                messages=[
                    meta_text("wamid.HALF1", "cut HALF here", phone="5511000000011", ts=NOW_TS),
                    meta_text(
                        "wamid.HALF2", "whole \\ud83d\\ude00", phone="5511000000012", ts=NOW_TS
                    ),
                ]
            )
        ]
    )
    body = body.replace(b"HALF here", b"\\ud83d here").replace(b"\\\\ud83d", b"\\ud83d")
    body = body.replace(b"\\\\ude00", b"\\ude00")
    resp = await wa.post_meta(body)
    assert resp.status == 200, await resp.text()
    texts = {e["message"]["provider_message_id"]: e["message"]["text"] for e in await wa.received()}
    assert texts == {"wamid.HALF1": "cut \ufffd here", "wamid.HALF2": "whole \U0001f600"}


async def test_a_webhook_url_with_a_trailing_slash_is_served_and_signed_as_called(
    wa: WaGateway,
) -> None:
    """A provider console given the URL with a trailing slash posts there: Twilio signs that
    URL, slash included, and the webhook is stored; signed without the slash, it is forged."""
    pairs = twilio_inbound("SM" + "7" * 32, "hola con barra")
    resp = await wa.post_twilio(pairs, url=TWILIO_URL + "/")
    assert resp.status == 200, await resp.text()
    (event,) = await wa.received()
    assert event["message"]["text"] == "hola con barra"
    forged = twilio_sign(TWILIO_URL, pairs)  # the other form's signature
    resp = await wa.post_twilio(pairs, url=TWILIO_URL + "/", signature=forged)
    assert resp.status == 403
    body = meta_messages([meta_text("wamid.SLASH", "hola meta", ts=NOW_TS)])
    resp = await wa.client.post(
        f"/webhooks/{META}/", data=body, headers={"X-Hub-Signature-256": meta_sign(body)}
    )
    assert resp.status == 200


async def test_a_profile_name_of_twenty_thousand_characters_is_cut_not_stored_whole(
    wa: WaGateway,
) -> None:
    """Hostile-content audit: it was stored whole and filled the inbox's header far past the
    screen. The name is cut; the message is stored, and the payload keeps the name whole."""
    await wa.customer_twilio("SM" + "a" * 32, "hola", name="P" * 20_000)
    (received,) = await wa.received()
    shown = received["conversation"]["contact"]["display_name"]
    assert shown == "P" * 199 + "…"
    assert received["message"]["contact"]["display_name"] == shown
    assert received["message"]["text"] == "hola"
    assert received["message"]["raw"]["ProfileName"] == "P" * 20_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("From", "whatsapp:\x00\n+1"),
        ("From", "whatsapp:" + "A" * 5_000),
        ("From", "whatsapp:+1 555 0100"),
        ("MessageSid", "SM1\n\x1b[31m"),
        ("MessageSid", "X" * 10_000),
    ],
)
async def test_a_signed_twilio_message_from_no_number_or_with_no_sid_is_a_400(
    field: str, value: str, wa: WaGateway
) -> None:
    """Hostile-content audit: a From of control characters was stored as the contact's
    address (and replies posted `To=whatsapp:%00%0A%2B1` to Twilio); a MessageSid with a
    newline and an escape sequence, or of 10,000 characters, was stored as the dedup key."""
    pairs = [(k, value if k == field else v) for k, v in twilio_inbound("SM" + "b" * 32, "hola")]
    before = await snapshot(wa)
    with capture_logs() as logs:
        resp = await wa.post_twilio(pairs)
    assert resp.status == 400
    assert field in (await resp.json())["error"]["message"]
    assert await snapshot(wa) == before
    assert [e["event"] for e in logs if e["event"] == "webhook.malformed"] == ["webhook.malformed"]
