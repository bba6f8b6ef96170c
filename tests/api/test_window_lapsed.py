"""A conversation whose reply window lapsed is inactive by the rules before its timer runs:
agents' actions on it are refused as on any inactive conversation, and it ends inactive."""

from __future__ import annotations

from datetime import timedelta

from tests.api.conftest import BASE_CONFIG, GatewayFactory
from tests.api.test_config_removals import customer

SITE = '{name: site, type: webchat, no_agent_timeout: 5m, allowed_origins: ["https://shop.example.com"]}'
WINDOWED = BASE_CONFIG.replace(SITE, SITE[:-1] + ", reply_window: 1h}")


async def test_actions_after_the_window_lapsed_find_it_inactive(
    make_gateway: GatewayFactory,
) -> None:
    assert WINDOWED != BASE_CONFIG
    gw = await make_gateway(WINDOWED)  # no scheduler: the window's timer never runs here
    _, waiting = await customer(gw, "Ada", "hola")
    _, active = await customer(gw, "Bea", "hola")
    assert (await gw.post("maria", f"/api/v1/conversations/{active}/accept"))[0] == 200
    gw.clock.advance(timedelta(hours=1, milliseconds=2))

    status, body = await gw.post("maria", f"/api/v1/conversations/{waiting}/accept")
    assert (status, body["error"]["code"]) == (409, "invalid_transition")
    status, body = await gw.post("maria", f"/api/v1/conversations/{active}/close")
    assert (status, body["error"]["code"]) == (409, "invalid_transition")
    for conv_id in (waiting, active):
        _, conv = await gw.get("maria", f"/api/v1/conversations/{conv_id}")
        assert (conv["state"], conv["inactive_reason"]) == ("inactive", "window_expired")
    status, log = await gw.get("crm", "/api/v1/events?limit=1000")
    inactive = [
        e["conversation"]["id"]
        for e in log["events"]
        if e["type"] == "conversation.updated" and e["change"] == "inactive"
    ]
    assert sorted(inactive) == sorted([waiting, active])  # each once
