"""The agent send path against the stand-in provider APIs: a body with both text and a template,
an Idempotency-Key reused for a different split request, and a send whose outcome cannot be
recorded (the provider answers an id another message already carries)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.whatsapp_e2e.conftest import META, TWILIO, WaGateway, next_event

TEMPLATE = {"name": "HXb5b62575e6e4ff6129ad7c8efe1f983e", "language": "es", "params": ["Ana"]}


def images(*numbers: int) -> list[dict[str, str]]:
    return [
        {"kind": "image", "url": f"https://example.com/{n}.jpg", "mime_type": "image/jpeg"}
        for n in numbers
    ]


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_text_and_template_together_are_refused(channel: str, wa: WaGateway) -> None:
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    before = await wa.counts()
    status, body = await wa.reply(conversation_id, {"text": "Hola", "template": TEMPLATE})
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert '"text"' in body["error"]["message"] and '"template"' in body["error"]["message"]
    await wa.gw.settle()
    assert await wa.counts() == before and wa.fake(channel).calls == []
    # Each alone is fine, and a template may still carry what one message holds.
    status, body = await wa.reply(conversation_id, {"template": TEMPLATE, "attachments": images(1)})
    assert status == 202 and body["message"]["kind"] == "template", body
    status, body = await wa.reply(conversation_id, {"text": "Hola", "attachments": images(1)})
    assert status == 202 and body["message"]["text"] == "Hola", body


async def test_a_twilio_template_named_other_than_a_content_sid_is_refused_at_once(
    wa: WaGateway,
) -> None:
    """Twilio sends a WhatsApp template by Content SID (HX...): a name it cannot know is a 400
    to the agent, with nothing stored or sent, not a 202 that Twilio would fail later."""
    conversation_id = await wa.open_conversation(TWILIO, pid="in-1")
    before = await wa.counts()
    named = {**TEMPLATE, "name": "order_update"}
    status, body = await wa.reply(conversation_id, {"template": named})
    assert status == 400, body
    assert "Content SID" in body["error"]["message"]
    await wa.gw.settle()
    assert await wa.counts() == before and wa.fake(TWILIO).calls == []
    # The Cloud API names templates; the same name is fine there.
    meta_conversation = await wa.open_conversation(META, pid="in-2")
    status, body = await wa.reply(meta_conversation, {"template": named})
    assert status == 202, body


async def test_text_with_an_audio_first_attachment_is_refused_on_the_cloud_api(
    wa: WaGateway,
) -> None:
    """The text goes out as the first attachment's caption, and audio and stickers take none:
    a 400 now, not a 202 whose message could only fail."""
    conversation_id = await wa.open_conversation(META, pid="in-1")
    audio = {"url": "https://example.com/voice.ogg", "mime_type": "audio/ogg"}
    status, body = await wa.reply(conversation_id, {"text": "escucha", "attachments": [audio]})
    assert status == 400, body
    assert "WhatsApp audio messages carry no text" in body["error"]["message"]
    await wa.gw.settle()
    assert wa.fake(META).calls == []
    status, body = await wa.reply(conversation_id, {"attachments": [audio]})
    assert status == 202 and body["message"]["attachments"][0]["kind"] == "audio", body
    status, body = await wa.reply(conversation_id, {"text": "mira", "attachments": images(1)})
    assert status == 202, body


async def test_a_split_request_replays_only_when_identical(wa: WaGateway) -> None:
    """Meta carries one medium per message: the parts are stored under KEY#1, KEY#2, ... and a
    request reusing the key must match every part, and be split the same way."""
    conversation_id = await wa.open_conversation(META, pid="in-1")
    path = f"/api/v1/conversations/{conversation_id}/messages"
    headers = {"Idempotency-Key": "k1"}
    request = {"text": "Fotos", "attachments": images(1, 2, 3)}
    status, first = await wa.gw.post("maria", path, request, headers=headers)
    assert status == 202 and len(first["messages"]) == 3, first
    assert [m["extra"]["part"] for m in first["messages"]] == [
        {"number": n, "of": 3} for n in (1, 2, 3)
    ]
    await wa.gw.settle()
    before, calls = await wa.counts(), len(wa.graph.calls)
    status, again = await wa.gw.post("maria", path, request, headers=headers)
    assert status == 202
    assert [m["id"] for m in again["messages"]] == [m["id"] for m in first["messages"]]
    different: list[dict[str, Any]] = [
        {"text": "Fotos", "attachments": images(1, 2, 4)},  # only the last part differs
        {"text": "Otras", "attachments": images(1, 2, 3)},  # only the first part differs
        {"text": "Fotos", "attachments": images(1, 2)},  # fewer parts
        {"text": "Fotos", "attachments": images(1, 2, 3, 4)},  # more parts
        {"text": "Fotos", "attachments": images(1)},  # one message, not split
        {"text": "Fotos"},
    ]
    for body in different:
        status, answer = await wa.gw.post("maria", path, body, headers=headers)
        assert status == 422, (body, answer)
        assert answer["error"]["code"] == "idempotency_key_reused"
    await wa.gw.settle()
    assert await wa.counts() == before and len(wa.graph.calls) == calls


async def test_an_outcome_that_cannot_be_recorded_fails_the_message_not_the_delivery(
    wa: WaGateway,
) -> None:
    """The provider answers the same message id for two sends: the second cannot be stored
    under it. That message ends `failed` (the agent sees why), the error is logged with its
    traceback, and the next part of the split message is still delivered."""
    conversation_id = await wa.open_conversation(META, pid="in-1")
    wa.graph.next_ids.extend(["wamid.SAME", "wamid.SAME", "wamid.THIRD"])
    async with wa.client.ws_connect("/api/v1/stream?access_token=tok-maria") as ws:
        await next_event(ws, lambda f: f.get("type") == "hello")
        with capture_logs() as logs:
            status, body = await wa.reply(
                conversation_id, {"text": "Fotos", "attachments": images(1, 2, 3)}
            )
            assert status == 202, body
            first, second, third = [p["id"] for p in body["messages"]]
            event = await next_event(
                ws,
                lambda f: f.get("type") == "message.status" and f["message"]["id"] == second,
            )
            await wa.gw.settle()
    seen = event["message"]
    assert (seen["status"], seen["error_code"]) == ("failed", "internal_error")
    assert "wamid.SAME" in seen["error_message"]
    assert len(wa.graph.calls) == 3  # the third part went out after the second failed
    stored = {m["id"]: m for m in (await wa.conversation(conversation_id))["messages"]}
    assert stored[first]["provider_message_id"] == "wamid.SAME"
    assert stored[first]["status"] == "queued"  # accepted by Meta; statuses come by webhook
    assert (stored[second]["status"], stored[second]["error_code"]) == ("failed", "internal_error")
    assert stored[second]["provider_message_id"] != "wamid.SAME"
    assert stored[third]["provider_message_id"] == "wamid.THIRD"
    assert stored[third]["status"] == "queued"
    crashed = [e for e in logs if e["event"] == "outbound.record_crashed"]
    assert len(crashed) == 1 and crashed[0]["message_id"] == second
    assert crashed[0]["log_level"] == "error" and crashed[0]["exc_info"]
    # Nothing is left for the scheduler to redeliver once the redelivery deadline passes.
    wa.clock.advance(timedelta(minutes=11))
    await wa.gw.runtime.scheduler.run_once()
    await wa.gw.settle()
    assert len(wa.graph.calls) == 3
