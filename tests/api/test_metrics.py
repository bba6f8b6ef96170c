"""`GET /metrics` over real HTTP: the conversation gauges of every configured queue and state."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from gateway.model import State
from tests.api.conftest import Gateway
from tests.api.test_agent_api import waiting_conversation
from tests.conftest import ROOT

QUEUES = ("support", "sales")  # the queues of tests/api/conftest.py's BASE_CONFIG


async def conversation_gauges(gw: Gateway) -> dict[tuple[str, str], float]:
    """Every `gateway_conversations{queue,state}` series of one scrape, by (state, queue)."""
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    # The text format every Prometheus reads (prometheus_client's newest label, 1.0.0, is
    # unknown to Prometheus 2.x); the body is that format.
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await resp.text()
    pattern = r'^gateway_conversations\{queue="([^"]*)",state="([^"]*)"\} (\S+)$'
    return {
        (state, queue): float(value)
        for queue, state, value in re.findall(pattern, text, flags=re.MULTILINE)
    }


def zeros() -> dict[tuple[str, str], float]:
    return {(state.value, queue): 0.0 for state in State for queue in QUEUES}


async def test_every_queue_and_state_is_present_and_zero_when_empty(gw: Gateway) -> None:
    assert await conversation_gauges(gw) == zeros()
    resp = await gw.client.get("/metrics")
    text = await resp.text()
    assert 'gateway_conversations{queue="sales",state="waiting"} 0.0' in text


async def test_a_series_drops_to_zero_instead_of_disappearing(gw: Gateway) -> None:
    conversation = await waiting_conversation(gw)
    assert await conversation_gauges(gw) == {**zeros(), ("waiting", "support"): 1.0}

    base = f"/api/v1/conversations/{conversation}"
    status, _ = await gw.post("maria", f"{base}/accept")
    assert status == 200
    assert await conversation_gauges(gw) == {**zeros(), ("active", "support"): 1.0}

    status, _ = await gw.post("maria", f"{base}/close")
    assert status == 200
    gauges = await conversation_gauges(gw)
    assert gauges == {**zeros(), ("closed", "support"): 1.0}
    assert gauges[("waiting", "support")] == gauges[("active", "support")] == 0.0


async def test_every_metric_is_documented_in_the_readme(gw: Gateway) -> None:
    """README's metrics table lists exactly the families a scrape has (ops audit: nothing
    said which metrics exist, nor which are per node and which deployment-wide)."""
    resp = await gw.client.get("/metrics")
    scraped = {family.name for family in text_string_to_metric_families(await resp.text())}
    scraped = {name for name in scraped if name.startswith("gateway_")}
    section = (ROOT / "README.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(gateway_\w+)`", section, flags=re.MULTILINE))
    # prometheus_client names a counter's family without its `_total`.
    assert {name.removesuffix("_total") for name in documented} == scraped
    assert "_created" not in await resp.text()  # no start-time series beside each counter
