"""The webhook endpoint over real HTTP on loopback: signatures first, every fixture delivered,
batches, the Meta handshake, size limits and ingest failures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from structlog.testing import capture_logs

from plugins.whatsapp import WhatsAppAdapter, make_adapter
from plugins.whatsapp.meta_parse import parse_meta_body
from plugins.whatsapp.twilio_parse import form_params, parse_twilio_form
from tests.whatsapp.conftest import Serve
from tests.whatsapp.support import (
    META_APP_SECRET,
    META_DIR,
    META_TOKEN,
    META_VERIFY,
    NOW,
    PUBLIC_URL,
    TWILIO_DIR,
    TWILIO_TOKEN,
    RecordingInbound,
    fixture_bytes,
    make_context,
    meta_config,
    meta_files,
    meta_phone_number_id,
    meta_sign,
    twilio_body,
    twilio_config,
    twilio_files,
    twilio_pairs,
    twilio_sign,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
TWILIO_URL = f"{PUBLIC_URL}/webhooks/wa-twilio"


def twilio_adapter(
    session: aiohttp.ClientSession, inbound: RecordingInbound, **overrides: Any
) -> WhatsAppAdapter:
    return make_adapter(make_context(twilio_config(**overrides), session, inbound))


def meta_adapter(
    session: aiohttp.ClientSession, inbound: RecordingInbound, **overrides: Any
) -> WhatsAppAdapter:
    return make_adapter(make_context(meta_config(**overrides), session, inbound))


def _no_secrets(logs: Sequence[Mapping[str, Any]], *extra: str) -> None:
    text = repr(logs)
    for secret in (TWILIO_TOKEN, META_TOKEN, META_APP_SECRET, META_VERIFY, *extra):
        assert secret not in text


# --- Twilio ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", twilio_files(), ids=lambda p: p.name)
async def test_twilio_fixture_delivered(
    path: Path, serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(twilio_adapter(http_session, inbound))
    pairs = twilio_pairs(path)
    headers = {**FORM, "X-Twilio-Signature": twilio_sign(TWILIO_URL, pairs)}
    resp = await client.post("/webhooks/wa-twilio", data=twilio_body(path), headers=headers)
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    assert "<Response/>" in await resp.text()
    expected = parse_twilio_form(form_params(pairs), channel="wa-twilio", now=NOW)
    assert inbound.messages == expected.messages
    assert inbound.statuses == expected.statuses
    assert len(inbound.messages) + len(inbound.statuses) == 1


async def test_twilio_signature_over_query_and_port(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(twilio_adapter(http_session, inbound))
    path = TWILIO_DIR / "wa_inbound_text_courier.txt"
    pairs = twilio_pairs(path)
    # Twilio signs the query string it called; a signature without it does not match.
    signed = twilio_sign(f"{TWILIO_URL}?via=wa&x=%2B1", pairs)
    resp = await client.post(
        "/webhooks/wa-twilio?via=wa&x=%2B1",
        data=fixture_bytes(path),
        headers={**FORM, "X-Twilio-Signature": signed},
    )
    assert resp.status == 200
    resp = await client.post(
        "/webhooks/wa-twilio?via=wa&x=%2B1",
        data=fixture_bytes(path),
        headers={**FORM, "X-Twilio-Signature": twilio_sign(TWILIO_URL, pairs)},
    )
    assert resp.status == 403
    # ... and an explicit :443 in what Twilio signed is accepted too.
    with_port = twilio_sign("https://gw.example.com:443/webhooks/wa-twilio", pairs)
    resp = await client.post(
        "/webhooks/wa-twilio",
        data=fixture_bytes(path),
        headers={**FORM, "X-Twilio-Signature": with_port},
    )
    assert resp.status == 200
    assert len(inbound.messages) == 2


@pytest.mark.parametrize("signature", [None, "forged", "wrong-token", "tampered"])
async def test_twilio_bad_signature_is_refused(
    signature: str | None, serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(twilio_adapter(http_session, inbound))
    path = TWILIO_DIR / "wa_inbound_text_courier.txt"
    body = fixture_bytes(path)
    headers = dict(FORM)
    if signature == "forged":
        headers["X-Twilio-Signature"] = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    elif signature == "wrong-token":
        headers["X-Twilio-Signature"] = twilio_sign(TWILIO_URL, twilio_pairs(path), "6789")
    elif signature == "tampered":
        headers["X-Twilio-Signature"] = twilio_sign(TWILIO_URL, twilio_pairs(path))
        body = body.replace(b"Body=Msg", b"Body=Pwned")
    with capture_logs() as logs:
        resp = await client.post("/webhooks/wa-twilio", data=body, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert inbound.messages == [] and inbound.statuses == []
    events = [e for e in logs if e["event"] == "webhook.signature_invalid"]
    assert events and events[0]["channel"] == "wa-twilio"
    _no_secrets(logs, headers.get("X-Twilio-Signature", "\0"))


async def test_twilio_malformed_after_valid_signature(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(twilio_adapter(http_session, inbound))
    pairs = [("Body", "no sid"), ("From", "whatsapp:+1")]
    headers = {**FORM, "X-Twilio-Signature": twilio_sign(TWILIO_URL, pairs)}
    with capture_logs() as logs:
        resp = await client.post("/webhooks/wa-twilio", data=urlencode(pairs), headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
    assert any(e["event"] == "webhook.malformed" for e in logs)
    assert inbound.messages == []


async def test_twilio_get_is_not_allowed(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    client = await serve(twilio_adapter(http_session, RecordingInbound()))
    resp = await client.get("/webhooks/wa-twilio?hub.mode=subscribe")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"  # RFC 9110 (re-audit: no Allow)


# --- Meta -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", meta_files(), ids=lambda p: p.name)
async def test_meta_fixture_delivered(
    path: Path, serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    adapter = meta_adapter(http_session, inbound, phone_number_id=meta_phone_number_id(path))
    client = await serve(adapter)
    body = fixture_bytes(path)
    headers = {**JSON, "X-Hub-Signature-256": meta_sign(body)}
    resp = await client.post("/webhooks/wa-cloud", data=body, headers=headers)
    assert resp.status == 200
    assert await resp.json() == {}
    expected = parse_meta_body(body, channel="wa-cloud", now=NOW)
    assert inbound.messages == expected.messages
    assert inbound.statuses == expected.statuses
    assert inbound.messages or inbound.statuses or expected.errors


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "wrong-secret", "tampered"])
async def test_meta_bad_signature_is_refused(
    signature: str | None, serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound))
    body = fixture_bytes(META_DIR / "msg_text.json")
    headers = dict(JSON)
    if signature == "wrong-secret":
        headers["X-Hub-Signature-256"] = meta_sign(body, "not-the-app-secret")
    elif signature == "tampered":
        headers["X-Hub-Signature-256"] = meta_sign(body)
        body = body.replace(b"Body Text", b"Evil Text")
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    with capture_logs() as logs:
        resp = await client.post("/webhooks/wa-cloud", data=body, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "invalid_signature"
    assert inbound.messages == []
    assert any(e["event"] == "webhook.signature_invalid" for e in logs)
    _no_secrets(logs, headers.get("X-Hub-Signature-256", "\0"))


async def test_meta_malformed_after_valid_signature(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound))
    for body in (b"{not json", b'{"object": "whatsapp_business_account", "entry": 3}'):
        headers = {**JSON, "X-Hub-Signature-256": meta_sign(body)}
        resp = await client.post("/webhooks/wa-cloud", data=body, headers=headers)
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"
    assert inbound.messages == []


async def test_meta_handshake(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    client = await serve(meta_adapter(http_session, RecordingInbound()))
    ok = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": META_VERIFY}
    resp = await client.get("/webhooks/wa-cloud", params=ok)
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert await resp.text() == "1158201444"
    with capture_logs() as logs:
        for bad in (
            {**ok, "hub.verify_token": "guess"},
            {**ok, "hub.mode": "unsubscribe"},
            {"hub.mode": "subscribe", "hub.challenge": "1"},
        ):
            resp = await client.get("/webhooks/wa-cloud", params=bad)
            assert resp.status == 403
            assert "1158201444" not in await resp.text()
    assert [e["event"] for e in logs] == ["webhook.verify_failed"] * 3
    _no_secrets(logs, "guess")
    resp = await client.get("/webhooks/wa-cloud", params={**ok, "hub.challenge": ""})
    assert resp.status == 400


def _value(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((META_DIR / name).read_bytes())["entry"][0]["changes"][0][
        "value"
    ]
    return value


def _batch() -> bytes:
    """One POST built from several fixtures, with one broken message in the middle."""
    text, image, reaction = (
        _value("msg_text.json"),
        _value("msg_image.json"),
        _value("msg_reaction.json"),
    )
    image["messages"][0]["id"] = "wamid.image"
    reaction["messages"][0]["id"] = "wamid.reaction"
    statuses = _value("status_read.json")["statuses"] + _value("status_delivered.json")["statuses"]
    statuses[1]["id"] = "wamid.delivered"
    first = dict(
        text, messages=[text["messages"][0], {"type": "text", "from": "1"}, image["messages"][0]]
    )
    second = dict(reaction, statuses=statuses)
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "waba", "changes": [{"field": "messages", "value": first}]},
            {"id": "waba", "changes": [{"field": "messages", "value": second}]},
        ],
    }
    return json.dumps(payload, ensure_ascii=False).encode()


async def test_meta_batch_with_broken_item(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound))
    body = _batch()
    with capture_logs() as logs:
        resp = await client.post(
            "/webhooks/wa-cloud",
            data=body,
            headers={**JSON, "X-Hub-Signature-256": meta_sign(body)},
        )
    assert resp.status == 200
    assert [m.provider_message_id for m in inbound.messages] == [
        "wamid.xyzxyz",
        "wamid.image",
        "wamid.reaction",
    ]
    assert [s.status.value for s in inbound.statuses] == ["read", "delivered"]
    skipped = [e for e in logs if e["event"] == "webhook.item_skipped"]
    assert [e["where"] for e in skipped] == ["entry[0].changes[0].messages[1]"]


async def test_meta_ingest_failure_answers_500_after_trying_all(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound(fail_on=frozenset({"wamid.xyzxyz"}))
    client = await serve(meta_adapter(http_session, inbound))
    body = _batch()
    with capture_logs() as logs:
        resp = await client.post(
            "/webhooks/wa-cloud",
            data=body,
            headers={**JSON, "X-Hub-Signature-256": meta_sign(body)},
        )
    assert resp.status == 500
    # The failed item is the first one; everything after it was still handed to ingest.
    assert [m.provider_message_id for m in inbound.messages] == ["wamid.image", "wamid.reaction"]
    # status_read carries the same id (wamid.xyzxyz) and failed too; the other one went in.
    assert [s.provider_message_id for s in inbound.statuses] == ["wamid.delivered"]
    failed = [e for e in logs if e["event"] == "webhook.ingest_failed"]
    assert {e["item"] for e in failed} == {"message", "status"}


async def test_meta_provider_errors_are_logged(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound, phone_number_id="1234567890"))
    body = fixture_bytes(META_DIR / "courier_wac_error_errors.json")
    with capture_logs() as logs:
        resp = await client.post(
            "/webhooks/wa-cloud",
            data=body,
            headers={**JSON, "X-Hub-Signature-256": meta_sign(body)},
        )
    assert resp.status == 200
    errors = [e for e in logs if e["event"] == "whatsapp.provider_error"]
    assert errors[0]["code"] == "0"


async def test_meta_other_number_is_not_delivered(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound, phone_number_id="999"))
    body = fixture_bytes(META_DIR / "msg_text.json")
    resp = await client.post(
        "/webhooks/wa-cloud", data=body, headers={**JSON, "X-Hub-Signature-256": meta_sign(body)}
    )
    assert resp.status == 200
    assert inbound.messages == []


# --- Size limit -----------------------------------------------------------------------------


async def test_oversize_body_is_refused(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound))
    body = b'{"object": "whatsapp_business_account", "entry": []}' + b" " * (1024 * 1024)
    headers = {**JSON, "X-Hub-Signature-256": meta_sign(body)}
    resp = await client.post("/webhooks/wa-cloud", data=body, headers=headers)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: the cap applies while reading
        for _ in range(20):
            yield b" " * (64 * 1024)

    resp = await client.post("/webhooks/wa-cloud", data=chunks(), headers=headers)
    assert resp.status == 413
    assert inbound.messages == []


async def test_body_just_under_limit_is_read(
    serve: Serve, http_session: aiohttp.ClientSession
) -> None:
    inbound = RecordingInbound()
    client = await serve(meta_adapter(http_session, inbound))
    text = fixture_bytes(META_DIR / "msg_text.json")
    body = text + b" " * (1024 * 1024 - len(text))
    headers = {**JSON, "X-Hub-Signature-256": meta_sign(body)}
    resp = await client.post("/webhooks/wa-cloud", data=body, headers=headers)
    assert resp.status == 200
    assert len(inbound.messages) == 1


async def test_other_methods(serve: Serve, http_session: aiohttp.ClientSession) -> None:
    client = await serve(meta_adapter(http_session, RecordingInbound()))
    resp = await client.put("/webhooks/wa-cloud", data=b"{}")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET, POST"
