"""A restart with a queue or an agent removed from the config, on both stores: their open
conversations move where someone can act on them, instead of sitting in no inbox forever."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from gateway.model import State
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


async def test_a_conversation_of_a_removed_channel_says_it_cannot_be_answered(
    make_gateway: GatewayFactory,
) -> None:
    before = await make_gateway()
    _, conv_id = await customer(before, "Eva", "hola")
    _, waiting_id = await customer(before, "Flor", "hola")
    assert (await before.post("maria", f"/api/v1/conversations/{conv_id}/accept"))[0] == 200
    assert (await conversation(before, "maria", conv_id))["can_reply"] is True
    await before.client.close()

    renamed = BASE_CONFIG.replace("{name: site, type: webchat", "{name: chat, type: webchat")
    assert renamed != BASE_CONFIG
    after = await make_gateway(renamed)
    # The inbox and the conversation agree with what a reply gets: no channel, no answer.
    assert (await conversation(after, "maria", conv_id))["can_reply"] is False
    status, inbox = await after.get("maria", "/api/v1/inbox?state=active")
    assert status == 200
    (listed,) = [c for c in inbox["conversations"] if c["id"] == conv_id]
    assert listed["can_reply"] is False
    path = f"/api/v1/conversations/{conv_id}/messages"
    status, body = await after.post("maria", path, {"text": "¿sigues ahí?"})
    assert (status, body["error"]["code"]) == (409, "invalid_transition")
    # Nor is one taken on (accepted, or resumed), only to fill the agent's max_active.
    status, body = await after.post("maria", f"/api/v1/conversations/{waiting_id}/accept")
    assert (status, body["error"]["code"]) == (409, "invalid_transition")
    assert (await after.post("maria", f"/api/v1/conversations/{conv_id}/pending"))[0] == 200
    status, body = await after.post("maria", f"/api/v1/conversations/{conv_id}/resume")
    assert (status, body["error"]["code"]) == (409, "invalid_transition")
    assert (await after.post("maria", f"/api/v1/conversations/{conv_id}/close"))[0] == 200
