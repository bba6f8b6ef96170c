"""Reading one value out of a `/metrics` scrape, with prometheus_client's own parser."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families


async def sample(client: TestClient, name: str, **labels: str) -> float:
    """The value of the series `name{labels}` now; 0 when it has no sample yet (a counter
    that never moved)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    for family in text_string_to_metric_families(await resp.text()):
        for series in family.samples:
            if series.name == name and series.labels == labels:
                return float(series.value)
    return 0.0
