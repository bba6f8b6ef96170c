"""Agent replies through the real gateway to the stand-in provider APIs: what the provider
receives, delivery statuses in any order (even before the send answered), the 24 h window on
the provider's clock, "outside the window" refusals, retries, and a restart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from gateway import lifecycle
from gateway.ids import new_id
from gateway.model import DeliveryState, Direction, Message
from tests.api.test_stream_presence import open_stream, receive
from tests.metrics_text import sample
from tests.whatsapp.fakes import Call, meta_error, twilio_error
from tests.whatsapp.support import PUBLIC_URL
from tests.whatsapp_e2e.conftest import (
    META,
    TWILIO,
    TWILIO_NUMBER,
    WaFactory,
    WaGateway,
    meta_status,
    meta_statuses,
    next_event,
    twilio_callback,
    twilio_status,
)

TEMPLATE = {"name": "HXb5b62575e6e4ff6129ad7c8efe1f983e", "language": "es", "params": ["Ana"]}


async def post_status(
    wa: WaGateway, channel: str, provider_id: str, status: str, *, code: str | None = None
) -> int:
    """The provider reports a delivery status for one of our sends."""
    if channel == META:
        errors = [{"code": int(code), "title": "error"}] if code else None
        body = meta_statuses(
            meta_status(provider_id, status, ts=int(wa.clock.now().timestamp()), errors=errors)
        )
        return (await wa.post_meta(body)).status
    (call,) = [c for c in wa.twilio.calls if c.form.get("StatusCallback")][-1:]
    (callback,) = call.form["StatusCallback"]
    pairs = twilio_status(provider_id, status, error_code=code)
    return (await wa.post_twilio(pairs, url=callback)).status


def last_send(wa: WaGateway, channel: str) -> Call:
    return wa.fake(channel).calls[-1]


async def store_unsent(
    wa: WaGateway,
    conversation_id: str,
    text: str | None,
    *,
    channel: str = META,
    template: dict[str, Any] | None = None,
) -> Message:
    """A reply of Maria's stored and never sent: what a node that died (or was stopped) before
    delivering it leaves behind, `queued`, its redelivery deadline pending."""
    store = wa.gw.runtime.store
    conversation = await store.get_conversation(conversation_id)
    assert conversation is not None
    now = wa.clock.now()
    message = Message(
        id=new_id("m"), conversation_id=conversation_id, channel=channel,
        channel_type="whatsapp", provider=conversation.provider, direction=Direction.OUT,
        kind="template" if template else "text", text=text, sent_at=now, received_at=now,
        status=DeliveryState.QUEUED, agent="maria", template=template,
        contact=conversation.contact,
    )  # fmt: skip
    transition = lifecycle.agent_message(conversation, message, now)
    await store.add_outbound(transition, conversation.version, message, None)
    return message


# --- what the provider receives, and statuses in any order -------------------------------------


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_reply_reaches_the_provider_and_statuses_only_move_forward(
    channel: str, wa: WaGateway
) -> None:
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    provider_id = "wamid.OUT1" if channel == META else "SM" + "1" * 32
    message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    call = last_send(wa, channel)
    if channel == META:
        assert call.path == f"/v25.0/{wa.phone_number_id}/messages"
        assert call.json["to"] == "5511999990000"
        assert call.json["text"] == {"preview_url": False, "body": "Hello Ana"}
        assert call.json["biz_opaque_callback_data"] == message_id
    else:
        assert call.form["To"] == ["whatsapp:+5511999990000"]
        assert call.form["From"] == [TWILIO_NUMBER]
        assert call.form["Body"] == ["Hello Ana"]
        # our message id rides in the callback's query: a report finds it even after a crash
        assert call.form["StatusCallback"] == [
            f"{PUBLIC_URL}/webhooks/{TWILIO}?gw_message={message_id}"
        ]
    assert (await wa.message(conversation_id, message_id))["status"] == "queued"
    for status in ("sent", "read", "delivered"):  # a late `delivered` after `read`
        assert await post_status(wa, channel, provider_id, status) == 200
    await wa.gw.settle()
    message = await wa.message(conversation_id, message_id)
    assert message["status"] == "read"
    # /metrics counts each report by what it did, so delivery can be watched from outside.
    for status, outcome in (("sent", "applied"), ("read", "applied"), ("delivered", "stale")):
        reports = await sample(
            wa.client,
            "gateway_delivery_reports_total",
            channel=channel,
            status=status,
            outcome=outcome,
        )
        assert reports == 1
    moves = [
        e["message"]["status"]
        for e in await wa.events()
        if e["type"] == "message.status" and e["message"]["id"] == message_id
    ]
    assert moves == ["sent", "read"]


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_status_that_arrives_before_the_send_answered(channel: str, wa: WaGateway) -> None:
    """The provider calls our webhook while our send request is still waiting for its answer;
    the report is kept and applied when the send returns the id."""
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    answered: list[int] = []

    async def report_first(call: Call, provider_id: str) -> None:
        if channel == TWILIO:
            answered.append(await twilio_callback(wa, call, provider_id, "sent"))
            answered.append(await twilio_callback(wa, call, provider_id, "delivered"))
        else:
            answered.append(await post_status(wa, channel, provider_id, "delivered"))
        # The gateway has committed the reports before the send returned the id.
        assert (await wa.counts())["orphan_statuses"] == len(answered)

    wa.fake(channel).before_reply = report_first
    provider_id = "wamid.EARLY" if channel == META else "SM" + "e" * 32
    message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    assert answered and set(answered) == {200}
    message = await wa.message(conversation_id, message_id)
    assert message["status"] == "delivered"
    assert (await wa.counts())["orphan_statuses"] == 0


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_window_closed_report_before_the_send_answered(channel: str, wa: WaGateway) -> None:
    """A failure meaning "outside the window" that overtakes the send's answer still closes
    the conversation's window once the send returns the id."""
    conversation_id = await wa.open_conversation(channel, pid="in-early-fail")
    code = "131047" if channel == META else "63016"

    async def fail_first(call: Call, provider_id: str) -> None:
        if channel == TWILIO:
            pairs = twilio_status(provider_id, "failed", error_code=code)
            (callback,) = call.form["StatusCallback"]
            assert (await wa.post_twilio(pairs, url=callback)).status == 200
        else:
            assert await post_status(wa, channel, provider_id, "failed", code=code) == 200

    wa.fake(channel).before_reply = fail_first
    provider_id = "wamid.EARLYFAIL" if channel == META else "SM" + "f" * 32
    message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    message = await wa.message(conversation_id, message_id)
    assert message["status"] == "failed" and message["error_code"] == code
    conversation = await wa.conversation(conversation_id)
    assert conversation["state"] == "inactive"
    assert conversation["inactive_reason"] == "window_expired"


# --- the 24 h window ---------------------------------------------------------------------------


def template_shape(channel: str, call: Call) -> None:
    if channel == META:
        assert call.json["type"] == "template"
        assert call.json["template"] == {
            "name": TEMPLATE["name"],
            "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
        }
        assert "text" not in call.json
    else:
        assert call.form["ContentSid"] == [TEMPLATE["name"]]
        assert orjson.loads(call.form["ContentVariables"][0]) == {"1": "Ana"}
        assert "Body" not in call.form


async def test_cloud_api_templates_take_named_variables_and_components(wa: WaGateway) -> None:
    """Templates with header media or button parameters, or named variables: `components`
    go to Meta as written, and `params` as an object become named body parameters."""
    conversation_id = await wa.open_conversation(META, pid="in-t")
    header = {
        "type": "header",
        "parameters": [{"type": "image", "image": {"link": "https://cdn.example.com/p.png"}}],
    }
    button = {
        "type": "button",
        "sub_type": "url",
        "index": "0",
        "parameters": [{"type": "text", "text": "ORDER-7"}],
    }
    template = {
        "name": "order_ready",
        "language": "es",
        "params": {"customer": "Ana"},
        "components": [header, button],
    }
    status, body = await wa.reply(conversation_id, {"template": template})
    assert status == 202, body
    await wa.gw.settle()
    assert last_send(wa, META).json["template"] == {
        "name": "order_ready",
        "language": {"code": "es"},
        "components": [
            header,
            button,
            {
                "type": "body",
                "parameters": [{"type": "text", "parameter_name": "customer", "text": "Ana"}],
            },
        ],
    }
    both = {**template, "components": [{"type": "body", "parameters": []}]}
    status, body = await wa.reply(conversation_id, {"template": both})
    assert status == 400 and "body component" in body["error"]["message"]


async def test_twilio_templates_take_named_variables_but_no_components(wa: WaGateway) -> None:
    conversation_id = await wa.open_conversation(TWILIO, pid="in-t")
    template = {**TEMPLATE, "params": {"first_name": "Ana", "order": "7"}}
    status, body = await wa.reply(conversation_id, {"template": template})
    assert status == 202, body
    await wa.gw.settle()
    variables = orjson.loads(last_send(wa, TWILIO).form["ContentVariables"][0])
    assert variables == {"first_name": "Ana", "order": "7"}
    with_components = {**TEMPLATE, "components": [{"type": "header", "parameters": []}]}
    status, body = await wa.reply(conversation_id, {"template": with_components})
    assert status == 400 and "Cloud API" in body["error"]["message"]


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_window_closes_24h_after_the_customer_wrote(channel: str, wa: WaGateway) -> None:
    start = wa.clock.now()
    # Meta stamps the message; it was written 5 minutes before it reached us (a slow
    # re-delivery), and the window runs from then. Twilio sends no time: receipt it is.
    written = start - timedelta(minutes=5) if channel == META else start
    conversation_id = await wa.open_conversation(channel, pid="in-1", ts=int(written.timestamp()))
    conversation = await wa.conversation(conversation_id)
    assert conversation["window_expires_at"] == (written + timedelta(hours=24)).isoformat().replace(
        "+00:00", "Z"
    )

    wa.clock.set(written + timedelta(hours=23, minutes=59))
    status, body = await wa.reply(conversation_id, {"text": "still in time"})
    assert status == 202, body
    await wa.gw.settle()
    assert len(wa.fake(channel).calls) == 1

    wa.clock.set(written + timedelta(hours=24))
    status, body = await wa.reply(conversation_id, {"text": "too late"})
    assert status == 409
    assert body["error"]["code"] == "window_closed"
    assert "template" in body["error"]["message"]
    assert len(wa.fake(channel).calls) == 1  # nothing reached the provider
    assert (await wa.conversation(conversation_id))["can_reply"] is False

    # A template may still be sent: the only way back to this customer.
    status, body = await wa.reply(conversation_id, {"template": TEMPLATE})
    assert status == 202, body
    assert body["message"]["kind"] == "template"
    await wa.gw.settle()
    template_shape(channel, last_send(wa, channel))

    assert await wa.gw.runtime.scheduler.run_once() >= 1
    await wa.gw.settle()
    conversation = await wa.conversation(conversation_id)
    assert conversation["state"] == "inactive"
    assert conversation["inactive_reason"] == "window_expired"
    assert conversation_id in [c["id"] for c in await wa.inbox("inactive")]

    # Inactive: free text is refused as `window_closed`, a template still goes out.
    status, body = await wa.reply(conversation_id, {"text": "hola?"})
    assert status == 409 and body["error"]["code"] == "window_closed"
    status, body = await wa.reply(conversation_id, {"template": TEMPLATE})
    assert status == 202, body
    await wa.gw.settle()
    assert len(wa.fake(channel).calls) == 3
    template_shape(channel, last_send(wa, channel))
    # ... but not by an agent who never held it.
    status, body = await wa.reply(conversation_id, {"template": TEMPLATE}, agent="jose")
    assert status == 403


async def test_customer_message_moves_the_window(wa: WaGateway) -> None:
    start = wa.clock.now()
    conversation_id = await wa.open_conversation(META, pid="in-1", ts=int(start.timestamp()))
    wa.clock.advance(timedelta(hours=20))
    await wa.customer_meta("in-2", "sigo aquí", ts=int(wa.clock.now().timestamp()))
    wa.clock.set(start + timedelta(hours=24))
    await wa.gw.runtime.scheduler.run_once()
    conversation = await wa.conversation(conversation_id)
    assert conversation["state"] == "active"
    status, _ = await wa.reply(conversation_id, {"text": "sí, dime"})
    assert status == 202


async def test_window_timer_survives_a_restart(make_wa: WaFactory) -> None:
    first = await make_wa(db="restart.db")
    written = first.clock.now()
    conversation_id = await first.open_conversation(META, pid="in-1", ts=int(written.timestamp()))
    await first.client.close()  # the whole app shuts down: store closed, nothing in memory

    second = await make_wa(db="restart.db", start=written + timedelta(hours=23, minutes=59))
    await second.gw.runtime.scheduler.run_once()
    assert (await second.conversation(conversation_id))["state"] == "active"
    second.clock.set(written + timedelta(hours=24, seconds=1))
    assert await second.gw.runtime.scheduler.run_once() >= 1
    conversation = await second.conversation(conversation_id)
    assert conversation["state"] == "inactive"
    assert conversation["inactive_reason"] == "window_expired"


# --- the provider says the window is closed ----------------------------------------------------

WINDOW_REFUSALS = {
    META: meta_error(131047, "Re-engagement message"),
    TWILIO: twilio_error(
        63016,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
}


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_provider_refuses_outside_the_window(channel: str, wa: WaGateway) -> None:
    """Our clock says the window is open, the provider disagrees: it wins."""
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    wa.fake(channel).replies.append(WINDOW_REFUSALS[channel])
    status, body = await wa.reply(conversation_id, {"text": "hola"})
    assert status == 202
    await wa.gw.settle()
    message = await wa.message(conversation_id, body["message"]["id"])
    code = "131047" if channel == META else "63016"
    assert (message["status"], message["error_code"]) == ("failed", code)
    assert len(wa.fake(channel).calls) == 1  # a permanent refusal is not retried
    conversation = await wa.conversation(conversation_id)
    assert conversation["state"] == "inactive"
    assert conversation["inactive_reason"] == "window_expired"
    assert conversation["can_reply"] is False


async def window_verdict(
    wa: WaGateway, channel: str, conversation_id: str, message_id: str, provider_id: str
) -> dict[str, Any]:
    """The provider reports our send failed as outside the window (Meta 131047, Twilio
    63016): the message is failed with that code; return its conversation as it is then."""
    code = "131047" if channel == META else "63016"
    assert await post_status(wa, channel, provider_id, "failed", code=code) == 200
    await wa.gw.settle()
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["error_code"]) == ("failed", code)
    return await wa.conversation(conversation_id)


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_window_closed_reported_by_status_webhook(channel: str, wa: WaGateway) -> None:
    """The same verdict arriving later, as a failed delivery status."""
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    provider_id = "wamid.OUT1" if channel == META else "SM" + "2" * 32
    message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    conversation = await window_verdict(wa, channel, conversation_id, message_id, provider_id)
    assert (conversation["state"], conversation["inactive_reason"]) == (
        "inactive",
        "window_expired",
    )


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_a_late_window_verdict_leaves_a_window_the_customer_reopened(
    channel: str, wa: WaGateway
) -> None:
    """Reports come late and out of order: a "window closed" failure for a reply sent before
    the customer's latest message fails that reply, but the customer's message opened the
    window again, so the conversation stays answerable (an audit saw it closed)."""
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    provider_id = "wamid.OUT1" if channel == META else "SM" + "3" * 32
    message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    wa.clock.advance(timedelta(seconds=5))
    if channel == META:
        await wa.customer_meta("in-2", "¿hola?", ts=int(wa.clock.now().timestamp()))
    else:
        await wa.customer_twilio("SM" + "4" * 32, "¿hola?")
    conversation = await window_verdict(wa, channel, conversation_id, message_id, provider_id)
    assert (conversation["state"], conversation["can_reply"]) == ("active", True)
    assert len([m for m in conversation["messages"] if m["direction"] == "in"]) == 2


# --- transient errors are retried ----------------------------------------------------------------


def transient(channel: str, kind: str) -> list[tuple[int, Any]]:
    if kind == "429":
        if channel == META:
            return [meta_error(130429, "Rate limit hit", 429)]
        return [twilio_error(20429, "Too Many Requests", 429)]
    if channel == META:
        return [meta_error(131000, "Something went wrong", 500)]
    return [twilio_error(20500, "Internal Server Error", 500)]


@pytest.mark.parametrize("kind", ["429", "500", "timeout"])
@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_transient_errors_are_retried(channel: str, kind: str, make_wa: WaFactory) -> None:
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    fake = wa.fake(channel)
    if kind == "timeout":
        fake.hang = 2
    else:
        fake.replies.extend(transient(channel, kind) * 2)
    provider_id = "wamid.OK" if channel == META else "SM" + "3" * 32
    with capture_logs() as logs:
        message_id = await wa.send_text(conversation_id, channel, provider_id=provider_id)
    assert len(fake.calls) == 3  # two failures, then the third try (the last allowed) succeeds
    message = await wa.message(conversation_id, message_id)
    assert message["status"] == "queued" and message["error_code"] is None
    # Each retry is logged and counted; the send's line says how many attempts it took.
    retries = [e for e in logs if e["event"] == "outbound.retrying"]
    assert [(e["message_id"], e["attempt"], e["of"]) for e in retries] == [
        (message_id, 1, 3),
        (message_id, 2, 3),
    ]
    assert all(e["error"] and e["wait_s"] >= 0 for e in retries)
    (accepted,) = [e for e in logs if e["event"] == "outbound.accepted"]
    assert (accepted["attempts"], accepted["status"]) == (3, "queued")
    assert accepted["provider_message_id"] == provider_id
    assert await sample(wa.client, "gateway_outbound_retries_total", channel=channel) == 2
    sent = await sample(
        wa.client, "gateway_outbound_messages_total", channel=channel, status="queued"
    )
    assert sent == 1


def text_sent(channel: str, call: Call) -> str:
    """The text a send carried, as the provider read it."""
    if channel == META:
        return str(call.json["text"]["body"])
    (body,) = call.form["Body"]
    return body


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_replies_reach_the_customer_in_the_order_sent_while_the_first_is_retried(
    channel: str, make_wa: WaFactory
) -> None:
    """Maria writes "Hi" and, while the provider keeps it hanging (it times out and is
    retried), "Your order is 123": the customer gets them in that order. The second waited its
    turn, so its redelivery deadline counts from when its turn came, not from when it was
    stored (another node would otherwise take it for abandoned and send it while queued)."""
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(channel, pid="in-order")
    fake = wa.fake(channel)
    fake.hang = 1
    fake.arrived.clear()
    status, _ = await wa.reply(conversation_id, {"text": "Hi"})
    assert status == 202
    await fake.arrived.wait()  # "Hi" is at the provider, unanswered
    status, body = await wa.reply(conversation_id, {"text": "Your order is 123"})
    assert status == 202
    second = body["message"]["id"]
    turn_came = wa.clock.advance(timedelta(minutes=5))
    redelivery_due: list[object] = []

    async def note_deadline(call: Call, provider_id: str) -> None:
        if text_sent(channel, call) == "Your order is 123":
            redelivery_due.append(await wa.gw.runtime.store.next_due())

    fake.before_reply = note_deadline
    await wa.gw.settle()
    assert [text_sent(channel, c) for c in fake.calls] == ["Hi", "Hi", "Your order is 123"]
    assert redelivery_due == [turn_came + wa.gw.runtime.outbound.retry.redeliver_after]
    assert (await wa.message(conversation_id, second))["status"] != "failed"


async def test_a_reply_through_another_node_waits_for_the_one_still_being_retried(
    make_wa: WaFactory,
) -> None:
    """A load balancer without sticky sessions: Maria's "Hi" went in through node A, whose
    provider keeps it hanging (it times out and is retried); her next reply comes in through
    node B, which waits for "Hi" to be taken before it sends."""
    node_a = await make_wa(request_timeout="300ms")
    node_b = await make_wa(request_timeout="300ms")  # the same store: a second node
    node_b.gw.runtime.outbound.other_nodes = True  # as on Redis (SQLite is one process)
    conversation_id = await node_a.open_conversation(META, pid="in-two-nodes")
    fake = node_a.fake(META)  # both nodes send to the same stand-in
    fake.hang = 1
    fake.arrived.clear()
    status, _ = await node_a.reply(conversation_id, {"text": "Hi"})
    assert status == 202
    await fake.arrived.wait()
    with capture_logs() as logs:
        status, body = await node_b.reply(conversation_id, {"text": "Your order is 123"})
        assert status == 202
        await asyncio.gather(node_a.gw.runtime.outbound.drain(), node_b.gw.runtime.outbound.drain())
    assert [text_sent(META, c) for c in fake.calls] == ["Hi", "Hi", "Your order is 123"]
    (waited,) = [e for e in logs if e["event"] == "outbound.waiting_for_earlier"]
    assert waited["message_id"] == body["message"]["id"]
    assert not [e for e in logs if e["event"] == "outbound.order_wait_gave_up"]


async def test_a_reply_waits_for_an_earlier_one_only_as_long_as_its_sender_could_retry(
    wa: WaGateway,
) -> None:
    """An earlier reply still `queued` that no node on hand is sending (its node is stuck, or
    died): the next one waits at most the longest retry sequence, then goes. Re-audit: each
    reply after that waited a whole span of its own again (the nth one n spans); once the
    earlier one is older than a span, nothing waits for it any more."""
    conversation_id = await wa.open_conversation(META, pid="in-stuck")
    outbound = wa.gw.runtime.outbound
    stuck = await store_unsent(wa, conversation_id, "stuck")
    outbound.other_nodes = True  # as on Redis
    outbound.retry = replace(outbound.retry, attempts=1, send_timeout=0.2)  # one short try
    span = outbound.retry.longest
    fake = wa.fake(META)

    async def span_passes(call: Call, provider_id: str) -> None:
        if text_sent(META, call) == "next":  # sent once it waited the span out
            wa.clock.advance(timedelta(seconds=span))

    fake.before_reply = span_passes
    with capture_logs() as logs:
        await wa.reply(conversation_id, {"text": "next"})
        await wa.reply(conversation_id, {"text": "after next"})
        await wa.gw.settle()
    assert [text_sent(META, c) for c in fake.calls] == ["next", "after next"]
    (gave_up,) = [e for e in logs if e["event"] == "outbound.order_wait_gave_up"]
    assert gave_up["earlier"] == [stuck.id]
    waited = [e["message_id"] for e in logs if e["event"] == "outbound.waiting_for_earlier"]
    assert waited == [gave_up["message_id"]]  # "after next" did not wait a span of its own


async def test_in_one_process_a_reply_cut_off_by_a_restart_holds_nothing_back(
    wa: WaGateway,
) -> None:
    """SQLite is one process: an earlier reply still `queued` that this process is not sending
    was cut off by a restart and waits for its redelivery; the next reply goes at once."""
    outbound = wa.gw.runtime.outbound
    assert outbound.other_nodes == wa.gw.runtime.config.store.url.startswith("redis")
    outbound.other_nodes = False  # as on SQLite
    conversation_id = await wa.open_conversation(META, pid="in-cut-off")
    await store_unsent(wa, conversation_id, "cut off")
    with capture_logs() as logs:
        await wa.reply(conversation_id, {"text": "next"})
        async with asyncio.timeout(5):  # a wait for `cut_off` would last outbound.longest
            await wa.gw.settle()
    assert [text_sent(META, c) for c in wa.fake(META).calls] == ["next"]
    assert not [e for e in logs if e["event"].startswith("outbound.waiting")]


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_a_reply_after_one_that_failed_for_good_still_goes_after_it(
    channel: str, make_wa: WaFactory
) -> None:
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(channel, pid="in-order-failed")
    fake = wa.fake(channel)
    fake.replies.extend(transient(channel, "500") * 3)  # every try of the first fails
    _, first = await wa.reply(conversation_id, {"text": "Hi"})
    _, second = await wa.reply(conversation_id, {"text": "Are you there?"})
    await wa.gw.settle()
    assert [text_sent(channel, c) for c in fake.calls] == ["Hi"] * 3 + ["Are you there?"]
    assert (await wa.message(conversation_id, first["message"]["id"]))["status"] == "failed"
    assert (await wa.message(conversation_id, second["message"]["id"]))["status"] == "queued"


async def test_redeliveries_after_a_crash_go_in_the_order_the_replies_were_stored(
    wa: WaGateway,
) -> None:
    """Replies stored but never sent (the node died): their deadlines fire together, and the
    first one's retries hold the second back. Each redelivery's deadline moves on as it
    starts: the scheduler's claim lasts only its lease, far shorter than the retries."""
    conversation_id = await wa.open_conversation(META, pid="in-crash-order")
    store, outbound = wa.gw.runtime.store, wa.gw.runtime.outbound
    queued = [
        (await store_unsent(wa, conversation_id, text)).id for text in ("first", "second", "third")
    ]
    restarted = wa.clock.advance(timedelta(minutes=30))
    fake = wa.fake(META)
    fake.replies.extend(transient(META, "500") * 2)  # "first" goes on its third try
    due: list[object] = []

    async def note_deadline(call: Call, provider_id: str) -> None:
        due.append(await store.next_due())

    fake.before_reply = note_deadline
    for message_id in queued:
        outbound.redeliver(message_id)
    await wa.gw.settle()
    assert [text_sent(META, c) for c in fake.calls] == ["first"] * 3 + ["second", "third"]
    # While each went out, no deadline of theirs was due before `redeliver_after` from then.
    assert due == [restarted + outbound.retry.redeliver_after] * 3
    assert [(await wa.message(conversation_id, m))["status"] for m in queued] == ["queued"] * 3


@pytest.mark.parametrize("kind", ["500", "timeout"])
@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_last_try_fails_and_the_agent_sees_it(
    channel: str, kind: str, make_wa: WaFactory
) -> None:
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(channel, pid="in-1")
    fake = wa.fake(channel)
    if kind == "timeout":
        fake.hang = 3
    else:
        fake.replies.extend(transient(channel, kind) * 3)
    async with wa.client.ws_connect("/api/v1/stream?access_token=tok-maria") as ws:
        await next_event(ws, lambda f: f.get("type") == "hello")
        with capture_logs() as logs:
            status, body = await wa.reply(conversation_id, {"text": "¿me lees?"})
            assert status == 202
            message_id = body["message"]["id"]
            event = await next_event(
                ws,
                lambda f: f.get("type") == "message.status" and f["message"]["id"] == message_id,
            )
            await wa.gw.settle()  # the failure is logged once it is recorded
    assert len(fake.calls) == 3
    (failed,) = [e for e in logs if e["event"] == "outbound.failed"]
    assert (failed["message_id"], failed["attempts"]) == (message_id, 3)
    seen = event["message"]
    assert seen["status"] == "failed"
    reason = "500" if kind == "500" else "TimeoutError"
    assert reason in seen["error_message"]
    assert seen["error_code"] in ("131000", "20500", "channel_unavailable")
    await wa.gw.settle()
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["error_message"]) == ("failed", seen["error_message"])
    # A transient failure says nothing about the window: the conversation stays open.
    assert (await wa.conversation(conversation_id))["state"] == "active"


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_a_send_given_up_on_but_reported_delivered_is_no_longer_failed(
    channel: str, make_wa: WaFactory
) -> None:
    """Every try timed out, so the gateway marked the message failed without knowing whether
    the provider had taken it. The provider had: its report (which names our message) lifts
    the failure, the agent sees `delivered`, and nothing is sent again."""
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(channel, pid="in-gave-up")
    fake = wa.fake(channel)
    fake.hang = 3
    status, body = await wa.reply(conversation_id, {"text": "¿llegó?"})
    assert status == 202, body
    message_id = body["message"]["id"]
    await wa.gw.settle()
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["error_code"]) == ("failed", "channel_unavailable")
    call = fake.calls[-1]
    provider_id = "wamid.GAVEUP" if channel == META else "SM" + "9" * 32
    async with wa.client.ws_connect("/api/v1/stream?access_token=tok-maria") as ws:
        await next_event(ws, lambda f: f.get("type") == "hello")
        if channel == META:
            report = meta_status(provider_id, "delivered", ts=int(wa.clock.now().timestamp()))
            body_ = meta_statuses({**report, "biz_opaque_callback_data": message_id})
            assert (await wa.post_meta(body_)).status == 200
        else:
            assert await twilio_callback(wa, call, provider_id, "delivered") == 200
        event = await next_event(
            ws,
            lambda f: f.get("type") == "message.status" and f["message"]["id"] == message_id,
        )
    assert event["message"]["status"] == "delivered"
    assert event["message"]["error_code"] is None and event["message"]["error_message"] is None
    await wa.gw.settle()
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["provider_message_id"]) == ("delivered", provider_id)
    sends = len(fake.calls)
    await wa.gw.runtime.outbound.deliver(message_id)  # a stray redelivery sends nothing
    assert len(fake.calls) == sends == 3
    fake.release()


def _images(count: int) -> list[dict[str, str]]:
    return [
        {"kind": "image", "url": f"https://example.com/{n}.jpg", "mime_type": "image/jpeg"}
        for n in range(1, count + 1)
    ]


async def test_more_media_than_the_cloud_api_carries_go_as_several_messages_in_order(
    wa: WaGateway,
) -> None:
    """Meta carries one medium per message: three images and a text are three messages, the
    text as the first one's caption, sent in order, each with its own id and status."""
    conversation_id = await wa.open_conversation(META, pid="in-attach")
    before = (await wa.counts())["messages"]
    status, body = await wa.reply(conversation_id, {"text": "Su pedido", "attachments": _images(3)})
    assert status == 202, body
    parts = body["messages"]
    assert body["message"] == parts[0] and len(parts) == 3
    assert [len(p["attachments"]) for p in parts] == [1, 1, 1]
    assert [p["text"] for p in parts] == ["Su pedido", None, None]
    await wa.gw.settle()
    sent = wa.graph.calls[-3:]
    assert [c.json["image"]["link"] for c in sent] == [
        f"https://example.com/{n}.jpg" for n in (1, 2, 3)
    ]
    assert sent[0].json["image"]["caption"] == "Su pedido"
    assert all("caption" not in c.json["image"] for c in sent[1:])
    stored = [await wa.message(conversation_id, p["id"]) for p in parts]
    # Each part was accepted by Meta under its own wamid (statuses then arrive per wamid).
    assert [m["provider_message_id"] for m in stored] == [f"wamid.OUT{n}" for n in (1, 2, 3)]
    assert (await wa.counts())["messages"] == before + 3


async def test_a_retried_split_send_stores_and_sends_each_part_once(wa: WaGateway) -> None:
    """The same Idempotency-Key returns the same parts; a retry of a request that was cut
    short (here: only its first part got stored) stores and sends just the missing ones."""
    conversation_id = await wa.open_conversation(META, pid="in-attach-retry")
    path = f"/api/v1/conversations/{conversation_id}/messages"
    request = {"text": "Fotos", "attachments": _images(3)}
    # As if an earlier attempt of request "k-1" stored its first part, then the node died.
    status, first = await wa.gw.post(
        "maria", path, {"text": "Fotos", "attachments": _images(1)},
        headers={"Idempotency-Key": "k-1#1"},
    )  # fmt: skip
    assert status == 202
    await wa.gw.settle()
    calls_before = len(wa.graph.calls)
    status, body = await wa.gw.post("maria", path, request, headers={"Idempotency-Key": "k-1"})
    assert status == 202, body
    ids = [p["id"] for p in body["messages"]]
    assert ids[0] == first["message"]["id"] and len(set(ids)) == 3
    await wa.gw.settle()
    assert len(wa.graph.calls) == calls_before + 2  # only the two missing parts went out
    status, again = await wa.gw.post("maria", path, request, headers={"Idempotency-Key": "k-1"})
    assert status == 202 and [p["id"] for p in again["messages"]] == ids
    await wa.gw.settle()
    assert len(wa.graph.calls) == calls_before + 2


async def test_twilio_carries_ten_media_per_message(wa: WaGateway) -> None:
    conversation_id = await wa.open_conversation(TWILIO, pid="in-attach-twilio")
    status, body = await wa.reply(conversation_id, {"text": "Catálogo", "attachments": _images(12)})
    assert status == 202, body
    assert [len(p["attachments"]) for p in body["messages"]] == [10, 2]
    await wa.gw.settle()
    first, second = wa.twilio.calls[-2:]
    assert len(first.form["MediaUrl"]) == 10 and first.form["Body"] == ["Catálogo"]
    assert second.form["MediaUrl"] == [f"https://example.com/{n}.jpg" for n in (11, 12)]


async def test_a_template_with_more_media_than_one_message_carries_is_refused(
    wa: WaGateway,
) -> None:
    conversation_id = await wa.open_conversation(META, pid="in-attach-template")
    before = (await wa.counts())["messages"]
    template = {"name": "pedido", "language": "es", "params": []}
    status, body = await wa.reply(
        conversation_id, {"template": template, "attachments": _images(2)}
    )
    assert status == 400 and "at most 1 attachment" in body["error"]["message"]
    assert (await wa.counts())["messages"] == before


async def test_a_message_whose_window_lapsed_before_it_arrived_opens_inactive(
    wa: WaGateway,
) -> None:
    """Meta re-delivers a message written 25 hours ago to an automatic queue with an agent
    online: nobody may answer it in free text, so it is neither queued nor assigned (it would
    take a place of maria's max_active only to turn inactive a moment later)."""
    stream = await open_stream(wa.gw, "maria")
    written = wa.clock.now() - timedelta(hours=25)
    await wa.customer_meta("late-1", "price of the blue one?", ts=int(written.timestamp()))
    conversation_id = await wa.conversation_of(META, "+5511999990000")
    created = await receive(stream, type_="conversation.created")
    assert created["conversation"]["state"] == "inactive"
    conversation = await wa.conversation(conversation_id)
    assert conversation["state"] == "inactive"
    assert conversation["inactive_reason"] == "window_expired"
    assert conversation["agent"] is None and conversation["can_reply"] is False
    assert [m["text"] for m in conversation["messages"]] == ["price of the blue one?"]
    assert await wa.inbox("waiting") == [] and await wa.inbox("active") == []
    assert [c["id"] for c in await wa.inbox("inactive")] == [conversation_id]
    # free text is refused with the hint; an agent of its queue may send a template
    status, body = await wa.reply(conversation_id, {"text": "hola"})
    assert status == 409 and body["error"]["code"] == "window_closed"
    status, body = await wa.reply(conversation_id, {"template": TEMPLATE})
    assert status == 202, body
    # nothing was left for the timers either
    assert await wa.gw.runtime.scheduler.run_once() == 0
    await stream.close()


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_a_send_that_timed_out_but_went_out_is_not_sent_again(
    channel: str, make_wa: WaFactory
) -> None:
    """The provider takes the message but answers too late (or the gateway dies meanwhile):
    its report, which names our message (Meta's biz_opaque_callback_data, our Twilio
    StatusCallback's query), settles the message. Neither the retry after the timeout nor
    the redelivery after a crash sends it to the customer a second time."""
    wa = await make_wa(request_timeout="500ms")
    conversation_id = await wa.open_conversation(channel, pid="in-late")
    fake = wa.fake(channel)
    fake.hang = 1  # the provider takes it and does not answer in time
    fake.arrived.clear()
    status, body = await wa.reply(conversation_id, {"text": "only once"})
    assert status == 202, body
    message_id = body["message"]["id"]
    await fake.arrived.wait()
    (call,) = fake.calls[-1:]
    provider_id = "wamid.LATE1" if channel == META else "SM" + "7" * 32
    if channel == META:
        assert call.json["biz_opaque_callback_data"] == message_id
        report = meta_status(provider_id, "sent", ts=int(wa.clock.now().timestamp()))
        body_ = meta_statuses({**report, "biz_opaque_callback_data": message_id})
        assert (await wa.post_meta(body_)).status == 200
    else:
        assert await twilio_callback(wa, call, provider_id, "sent") == 200
    await wa.gw.settle()  # the timeout fires, the retry sees the report and stops
    sends = len(fake.calls)
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["provider_message_id"]) == ("sent", provider_id)
    # What the redelivery deadline does after a crash: nothing more goes out.
    await wa.gw.runtime.outbound.deliver(message_id)
    assert len(fake.calls) == sends == 1
    fake.release()


async def test_a_report_of_a_try_that_timed_out_but_went_out_too_says_it_was_sent_twice(
    make_wa: WaFactory,
) -> None:
    """Replay audit: the first try timed out, the retry went out as wamid.SECOND; then the
    provider reports the first try too (it went through after all), naming our message. The
    customer may have it twice: a warning says so, naming both ids, and the report counts as
    stale (it moves nothing) instead of as a report for an unknown message."""
    wa = await make_wa(request_timeout="300ms")
    conversation_id = await wa.open_conversation(META, pid="in-twice")
    fake = wa.fake(META)
    fake.hang = 1  # the first try: taken, answered too late
    fake.next_ids.append("wamid.SECOND")
    status, body = await wa.reply(conversation_id, {"text": "twice"})
    assert status == 202, body
    message_id = body["message"]["id"]
    await wa.gw.settle()
    assert (await wa.message(conversation_id, message_id))["provider_message_id"] == "wamid.SECOND"
    report = meta_status("wamid.FIRST", "delivered", ts=int(wa.clock.now().timestamp()))
    with capture_logs() as logs:
        answer = await wa.post_meta(
            meta_statuses({**report, "biz_opaque_callback_data": message_id})
        )
        assert answer.status == 200
    (twice,) = [e for e in logs if e["event"] == "ingest.status_for_second_send"]
    assert (twice["message_id"], twice["provider_message_id"]) == (message_id, "wamid.FIRST")
    assert twice["recorded_provider_message_id"] == "wamid.SECOND"
    assert not [e for e in logs if e["event"] == "ingest.status_unknown_message"]
    stale = await sample(
        wa.client, "gateway_delivery_reports_total", channel=META, status="delivered",
        outcome="stale",
    )  # fmt: skip
    assert stale == 1
    message = await wa.message(conversation_id, message_id)
    assert (message["status"], message["provider_message_id"]) == ("queued", "wamid.SECOND")


@pytest.mark.parametrize("channel", [META, TWILIO])
async def test_free_text_still_queued_when_the_window_lapsed_is_failed_not_sent(
    channel: str, wa: WaGateway
) -> None:
    """A reply accepted inside the window, still queued when the node died, and redelivered
    after a day's outage: the window has lapsed, so the provider could only refuse it (or, on
    a channel that does not check, the customer would get free text outside the window). It
    fails as `window_closed`, and nothing goes out; a template queued the same way still goes."""
    conversation_id = await wa.open_conversation(channel, pid="in-queued")
    store, outbound = wa.gw.runtime.store, wa.gw.runtime.outbound
    template = {"name": TEMPLATE["name"], "language": "es", "params": []}
    queued = [
        (await store_unsent(wa, conversation_id, "queued", channel=channel)).id,
        (await store_unsent(wa, conversation_id, None, channel=channel, template=template)).id,
    ]
    conversation = await store.get_conversation(conversation_id)
    assert conversation is not None and conversation.window_expires_at is not None
    calls = len(wa.fake(channel).calls)
    wa.clock.set(conversation.window_expires_at + timedelta(days=1))
    await outbound.deliver(queued[0])
    text = await wa.message(conversation_id, queued[0])
    assert (text["status"], text["error_code"]) == ("failed", "window_closed")
    assert len(wa.fake(channel).calls) == calls
    await outbound.deliver(queued[1])
    template = await wa.message(conversation_id, queued[1])
    assert template["provider_message_id"] is not None and template["status"] != "failed"
    assert len(wa.fake(channel).calls) == calls + 1
