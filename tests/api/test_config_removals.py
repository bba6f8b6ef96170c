"""A restart with a queue or an agent removed from the config, on both stores: their open
conversations move where someone can act on them, instead of sitting in no inbox forever."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from gateway.model import Contact, InboundMessage, State
from tests.api.conftest import BASE_CONFIG, TOKENS, Gateway, GatewayFactory, sha

# BASE_CONFIG without the `sales` queue (and its routing rule) and without agent `jose`.
REMOVED = (
    BASE_CONFIG.replace("  - {name: sales, distribution: automatic, strategy: least_busy}\n", "")
    .replace('  - {if: {text: "(?i)price|precio"}, queue: sales}\n', "")
    .replace("queues: [support, sales]", "queues: [support]")
    .replace(
        f'  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",\n'
        "      queues: [support], max_active: 2}\n",
        "",
    )
    .replace(
        f'  - {{id: ana, name: Ana, token_sha256: "{sha(TOKENS["ana"])}", queues: [sales],'
        " max_active: 1}\n",
        "",
    )
)


async def customer(gw: Gateway, name: str, text: str) -> tuple[dict[str, str], str]:
    """A new web chat customer writes; returns their session and their conversation's id."""
    visitor = await gw.visitor(name)
    await gw.visitor_says(visitor["token"], text, f"{name}-1")
    status, log = await gw.get("crm", "/api/v1/events?limit=1000")
    assert status == 200
    (conv_id,) = {
        e["conversation"]["id"]
        for e in log["events"]
        if e["type"] == "conversation.created"
        and e["conversation"]["contact"]["display_name"] == name
    }
    return visitor, conv_id


async def conversation(gw: Gateway, agent: str, conversation_id: str) -> dict[str, Any]:
    status, body = await gw.get(agent, f"/api/v1/conversations/{conversation_id}")
    assert status == 200, body
    conv: dict[str, Any] = body
    return conv


async def test_a_restart_without_a_queue_or_an_agent_moves_their_conversations(
    make_gateway: GatewayFactory,
) -> None:
    assert "sales" not in REMOVED and "jose" not in REMOVED  # the edit above took
    before = await make_gateway()
    _, waiting_sales = await customer(before, "Ada", "¿precio del plan?")  # routed to sales
    _, active_jose = await customer(before, "Bea", "hola")
    _, pending_jose = await customer(before, "Cid", "hola otra vez")
    _, active_maria_sales = await customer(before, "Dan", "precio, por favor")
    for agent, conv_id in (("jose", active_jose), ("jose", pending_jose)):
        assert (await before.post(agent, f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    assert (await before.post("jose", f"/api/v1/conversations/{pending_jose}/pending"))[0] == 200
    # `sales` distributes automatically, but nobody is online (no stream): maria takes it.
    path = f"/api/v1/conversations/{active_maria_sales}/accept"
    assert (await before.post("maria", path))[0] == 200
    ada = await conversation(before, "maria", waiting_sales)
    queued_at = {
        c: (await conversation(before, "maria", c))["queued_at"]
        for c in (active_jose, pending_jose)
    }
    await before.client.close()

    with capture_logs() as logs:
        after = await make_gateway(REMOVED)
    moved = {e["conversation_id"]: e for e in logs if e["event"] == "reconcile.moved"}
    assert set(moved) == {waiting_sales, active_jose, pending_jose, active_maria_sales}

    # Bea's and Cid's agent is gone: they wait again, at their old place in the queue.
    for conv_id in (active_jose, pending_jose):
        conv = await conversation(after, "maria", conv_id)
        assert (conv["state"], conv["agent"], conv["queue"]) == ("waiting", None, "support")
        assert conv["queued_at"] == queued_at[conv_id]
        assert moved[conv_id]["reason"] == "agent_removed"
    # Dan's queue is gone: routing now sends it to support; maria keeps it.
    dan = await conversation(after, "maria", active_maria_sales)
    assert (dan["state"], dan["agent"], dan["queue"]) == ("active", "maria", "support")
    # Ada was waiting in sales: she waits in support now, at her place.
    assert (ada["state"], ada["queue"]) == ("waiting", "sales")
    conv = await conversation(after, "maria", waiting_sales)
    assert (conv["state"], conv["queue"]) == ("waiting", "support")
    assert conv["queued_at"] == ada["queued_at"]
    status, inbox = await after.get("maria", "/api/v1/inbox?state=waiting")
    assert status == 200
    assert {active_jose, pending_jose} <= {c["id"] for c in inbox["conversations"]}

    # Each move is in the event log, saying why; maria can act on all of them now.
    status, log = await after.get("crm", "/api/v1/events?limit=1000")
    changes = {
        (e["conversation"]["id"], e["change"])
        for e in log["events"]
        if e["type"] == "conversation.updated"
    }
    assert (active_jose, "agent_removed") in changes
    assert (active_maria_sales, "queue_removed") in changes
    assert (await after.post("maria", f"/api/v1/conversations/{active_jose}/accept"))[0] == 200
    await after.client.close()

    # A second restart finds nothing left to move.
    with capture_logs() as logs:
        again = await make_gateway(REMOVED)
    assert not [e for e in logs if e["event"] == "reconcile.moved"]
    assert (await conversation(again, "maria", active_jose))["state"] == State.ACTIVE.value


async def test_open_conversations_of_a_removed_channel_become_inactive(
    make_gateway: GatewayFactory,
) -> None:
    """A renamed channel: its open conversations can never be answered, so they leave the
    waiting queue and the agent's load as inactive (`channel_removed`), still listed."""
    before = await make_gateway()
    _, conv_id = await customer(before, "Eva", "hola")
    _, waiting_id = await customer(before, "Flor", "hola")
    assert (await before.post("maria", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    assert (await conversation(before, "maria", conv_id))["can_reply"] is True
    await before.client.close()

    renamed = BASE_CONFIG.replace("{name: site, type: webchat", "{name: chat, type: webchat")
    assert renamed != BASE_CONFIG
    with capture_logs() as logs:
        after = await make_gateway(renamed)
    moved = {e["conversation_id"]: e["reason"] for e in logs if e["event"] == "reconcile.moved"}
    assert moved == {conv_id: "channel_removed", waiting_id: "channel_removed"}
    for conv_id_ in (conv_id, waiting_id):
        conv = await conversation(after, "maria", conv_id_)
        assert (conv["state"], conv["inactive_reason"], conv["can_reply"]) == (
            "inactive",
            "channel_removed",
            False,
        )
    status, inbox = await after.get("maria", "/api/v1/inbox?state=inactive")
    assert status == 200 and {c["id"] for c in inbox["conversations"]} == {conv_id, waiting_id}
    status, waiting = await after.get("maria", "/api/v1/inbox?state=waiting")
    assert waiting["conversations"] == []
    assert (await after.runtime.store.agent_loads()).get("maria", 0) == 0
    # No action brings one back; a reply cannot go anywhere.
    path = f"/api/v1/conversations/{conv_id}/messages"
    status, body = await after.post("maria", path, {"text": "¿sigues ahí?"})
    assert status == 409
    status, body = await after.post("maria", f"/api/v1/conversations/{waiting_id}/accept")
    assert (status, body["error"]["code"]) == (409, "invalid_transition")


async def test_an_agent_taken_off_a_queue_no_longer_holds_its_conversations(
    make_gateway: GatewayFactory,
) -> None:
    """Jose leaves `support` (he is still an agent, on `sales`): what he held there waits again
    at its place, for whoever is on the queue now."""
    before = await make_gateway()
    _, held = await customer(before, "Gil", "hola")
    _, set_aside = await customer(before, "Hugo", "hola")
    for conv_id in (held, set_aside):
        assert (await before.post("jose", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    assert (await before.post("jose", f"/api/v1/conversations/{set_aside}/pending"))[0] == 200
    queued_at = (await conversation(before, "maria", held))["queued_at"]
    await before.client.close()

    moved_off = BASE_CONFIG.replace(
        f'  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",\n'
        "      queues: [support, sales], max_active: 2}",
        f'  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",\n'
        "      queues: [sales], max_active: 2}",
    )
    assert moved_off != BASE_CONFIG
    with capture_logs() as logs:
        after = await make_gateway(moved_off)
    moved = {e["conversation_id"]: e["reason"] for e in logs if e["event"] == "reconcile.moved"}
    assert moved == {held: "agent_left_queue", set_aside: "agent_left_queue"}
    conv = await conversation(after, "maria", held)
    assert (conv["state"], conv["agent"], conv["queued_at"]) == ("waiting", None, queued_at)
    assert (await conversation(after, "maria", set_aside))["state"] == "waiting"
    assert (await after.post("maria", f"/api/v1/conversations/{held}/accept"))[0] == 200


async def test_a_removed_queues_history_stays_listed(make_gateway: GatewayFactory) -> None:
    """Inactive and closed conversations of a removed queue move to where routing now puts
    their channel, so agents can still look the contact up (DESIGN section 1)."""
    before = await make_gateway()
    _, closed = await customer(before, "Ivo", "precio?")  # routed to sales
    assert (await before.post("ana", f"/api/v1/conversations/{closed}/accept"))[0] == 200
    assert (await before.post("ana", f"/api/v1/conversations/{closed}/close"))[0] == 200
    await before.client.close()

    with capture_logs() as logs:
        after = await make_gateway(REMOVED)
    moved = {e["conversation_id"]: e for e in logs if e["event"] == "reconcile.moved"}
    assert moved[closed]["reason"] == "queue_removed"
    conv = await conversation(after, "maria", closed)
    assert (conv["state"], conv["queue"], conv["agent"]) == ("closed", "support", "ana")
    status, inbox = await after.get("maria", "/api/v1/inbox?state=closed")
    assert status == 200 and [c["id"] for c in inbox["conversations"]] == [closed]


async def test_a_changed_reply_window_applies_to_open_conversations(
    make_gateway: GatewayFactory,
) -> None:
    """A reply window set wrong is corrected for the conversations it already governs: each
    open one's window is measured again from the customer's last message."""
    ten_minutes = BASE_CONFIG.replace(
        "{name: site, type: webchat,", "{name: site, type: webchat, reply_window: 10m,"
    )
    assert ten_minutes != BASE_CONFIG
    before = await make_gateway(ten_minutes)
    _, conv_id = await customer(before, "Lia", "hola")
    first = await conversation(before, "maria", conv_id)
    assert first["window_expires_at"] is not None
    await before.client.close()

    day = ten_minutes.replace("reply_window: 10m", "reply_window: 24h")
    with capture_logs() as logs:
        after = await make_gateway(day)
    moved = [e for e in logs if e["event"] == "reconcile.moved"]
    assert [(e["conversation_id"], e["reason"]) for e in moved] == [
        (conv_id, "reply_window_changed")
    ]
    longer = await conversation(after, "maria", conv_id)
    opened = datetime.fromisoformat(first["window_expires_at"]) - timedelta(minutes=10)
    assert datetime.fromisoformat(longer["window_expires_at"]) == opened + timedelta(hours=24)
    await after.client.close()

    with capture_logs() as logs:  # the same config again: nothing to change
        again = await make_gateway(day)
    assert not [e for e in logs if e["event"] == "reconcile.moved"]
    await again.client.close()

    none = await make_gateway(BASE_CONFIG)  # no window at all any more
    assert (await conversation(none, "maria", conv_id))["window_expires_at"] is None
    assert (await conversation(none, "maria", conv_id))["can_reply"] is True


async def test_a_window_from_a_timestamp_in_the_future_is_not_stretched_at_restart(
    make_gateway: GatewayFactory,
) -> None:
    """Ingest measures the window from receipt when the provider's time is ahead (a wrong
    clock, a forged timestamp); measuring it again at restart must cap it the same way."""
    config = BASE_CONFIG.replace(
        "{name: site, type: webchat,", "{name: site, type: webchat, reply_window: 10m,"
    )
    before = await make_gateway(config)
    ahead = before.clock.now() + timedelta(hours=1)
    result = await before.runtime.ingestor.message(
        InboundMessage(
            channel="site",
            channel_type="webchat",
            provider="webchat",
            provider_message_id="v_ahead:1",
            contact=Contact("v_ahead"),
            sent_at=ahead,
            text="hola",
        )
    )
    assert result.conversation.window_expires_at == before.clock.now() + timedelta(minutes=10)
    await before.client.close()
    with capture_logs() as logs:
        after = await make_gateway(config)
    assert not [e for e in logs if e["event"] == "reconcile.moved"]
    conv = await conversation(after, "maria", result.conversation.id)
    expires = datetime.fromisoformat(conv["window_expires_at"])
    assert expires == result.conversation.window_expires_at
