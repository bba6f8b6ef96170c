"""A WhatsApp user who hides their number behind a username (BSUID only, 2026) stays the same
contact: their messages join the conversation of the phone their BSUID first came with, on
either provider, after a restart too, and an unknown BSUID is a contact of its own."""

from __future__ import annotations

from typing import Any

from tests.whatsapp_e2e.conftest import (
    TWILIO,
    WaFactory,
    WaGateway,
    meta_envelope,
    twilio_inbound,
)

PHONE = "5511999990000"
BSUID = "BR.1349120865530274191"


def meta_from(wamid: str, text: str, *, ts: int, phone: str | None, user_id: str) -> bytes:
    """A Meta text message with the BSUID fields; `phone=None` is a username-only sender."""
    message: dict[str, Any] = {
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
        "from_user_id": user_id,
    }
    contact: dict[str, Any] = {"profile": {"name": "Ana", "username": "@ana"}, "user_id": user_id}
    if phone is not None:
        message["from"] = phone
        contact["wa_id"] = phone
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1122334455667"},
        "contacts": [contact],
        "messages": [message],
    }
    return meta_envelope([value])


async def post(wa: WaGateway, body: bytes) -> None:
    resp = await wa.post_meta(body)
    assert resp.status == 200, await resp.text()


async def test_a_bsuid_only_message_joins_the_conversation_of_its_phone(wa: WaGateway) -> None:
    ts = int(wa.clock.now().timestamp())
    await post(wa, meta_from("wamid.A1", "Hola", ts=ts, phone=PHONE, user_id=BSUID))
    await post(
        wa, meta_from("wamid.A2", "Soy yo, sin número", ts=ts + 5, phone=None, user_id=BSUID)
    )
    received = await wa.received()
    assert [e["message"]["contact"]["address"] for e in received] == [f"+{PHONE}"] * 2
    first, second = (e["conversation"]["id"] for e in received)
    assert first == second
    assert received[1]["message"]["extra"]["user_id"] == BSUID
    conversation = await wa.conversation(first)
    assert [m["text"] for m in conversation["messages"]] == ["Hola", "Soy yo, sin número"]


async def test_the_pair_survives_a_restart(make_wa: WaFactory) -> None:
    wa = await make_wa(db="alias.db")
    ts = int(wa.clock.now().timestamp())
    await post(wa, meta_from("wamid.R1", "Hola", ts=ts, phone=PHONE, user_id=BSUID))
    restarted = await make_wa(db="alias.db", start=wa.clock.now())
    await post(restarted, meta_from("wamid.R2", "Otra vez", ts=ts + 5, phone=None, user_id=BSUID))
    received = await restarted.received()
    assert [e["message"]["contact"]["address"] for e in received] == [f"+{PHONE}"] * 2
    assert received[0]["conversation"]["id"] == received[1]["conversation"]["id"]


async def test_an_unknown_bsuid_is_a_contact_of_its_own(wa: WaGateway) -> None:
    ts = int(wa.clock.now().timestamp())
    await post(wa, meta_from("wamid.U1", "Hola", ts=ts, phone=None, user_id="US.777"))
    (event,) = await wa.received()
    assert event["message"]["contact"]["address"] == "US.777"


async def test_twilio_external_user_id_is_remembered_too(wa: WaGateway) -> None:
    with_phone = [*twilio_inbound("SM" + "1" * 32, "Hola"), ("ExternalUserId", f"whatsapp:{BSUID}")]
    resp = await wa.post_twilio(with_phone)
    assert resp.status == 200, await resp.text()
    username_only = [
        (k, v)
        for k, v in twilio_inbound("SM" + "2" * 32, "Sin número")
        if k not in ("From", "WaId")
    ]
    username_only += [("From", f"whatsapp:{BSUID}"), ("ExternalUserId", f"whatsapp:{BSUID}")]
    resp = await wa.post_twilio(username_only)
    assert resp.status == 200, await resp.text()
    received = [e for e in await wa.received() if e["message"]["channel"] == TWILIO]
    assert [e["message"]["contact"]["address"] for e in received] == [f"+{PHONE}"] * 2
    assert received[0]["conversation"]["id"] == received[1]["conversation"]["id"]
    assert received[1]["message"]["extra"]["user_id"] == BSUID
