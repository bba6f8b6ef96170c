"""A real gateway app on loopback HTTP with a manual clock, and helpers to drive it."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.outbound import RetryPolicy
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import Runtime, RuntimeOptions
from tests.conftest import STORE_KINDS, store_url
from tests.store.redis_server import RedisServer

TOKENS = {"maria": "tok-maria", "jose": "tok-jose", "ana": "tok-ana", "crm": "tok-crm"}
"""Agents' bearer tokens, and `crm`: an integrator's (reads the whole event log)."""


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


BASE_CONFIG = f"""
server: {{public_url: "http://gw.test"}}
store: {{url: "sqlite:///{{db}}"}}
presence: {{agent_disconnect_grace: 30s}}
channels:
  - {{name: site, type: webchat, no_agent_timeout: 5m, allowed_origins: ["https://shop.example.com"]}}
queues:
  - {{name: support, distribution: manual, requeue_after: 10m}}
  - {{name: sales, distribution: automatic, strategy: least_busy}}
routing:
  - {{if: {{text: "(?i)price|precio"}}, queue: sales}}
  - {{queue: support}}
agents:
  - {{id: maria, name: Maria, token_sha256: "{sha(TOKENS["maria"])}",
      queues: [support, sales], max_active: 2}}
  - {{id: jose, name: Jose, token_sha256: "{sha(TOKENS["jose"])}",
      queues: [support, sales], max_active: 2}}
  - {{id: ana, name: Ana, token_sha256: "{sha(TOKENS["ana"])}", queues: [sales], max_active: 1}}
integrators:
  - {{name: crm, token_sha256: "{sha(TOKENS["crm"])}"}}
"""


@dataclass
class Gateway:
    client: TestClient
    runtime: Runtime
    clock: ManualClock

    def auth(self, agent: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[agent]}"}

    async def get(self, agent: str, path: str, **kw: Any) -> tuple[int, Any]:
        resp = await self.client.get(path, headers=self.auth(agent), **kw)
        return resp.status, await resp.json()

    async def post(self, agent: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        headers = {**self.auth(agent), **kw.pop("headers", {})}
        resp = await self.client.post(path, json=body, headers=headers, **kw)
        return resp.status, await resp.json()

    async def visitor(self, name: str = "Ana") -> dict[str, str]:
        resp = await self.client.post("/webchat/site/session", json={"display_name": name})
        assert resp.status == 201
        data: dict[str, str] = await resp.json()
        return data

    async def visitor_says(self, token: str, text: str, client_id: str) -> dict[str, Any]:
        resp = await self.client.post(
            "/webchat/site/messages",
            json={"text": text, "client_id": client_id},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def settle(self) -> None:
        """Wait until deliveries in flight finished and the hub fanned out every event."""
        await self.runtime.outbound.drain()
        await self.runtime.hub.wait_past(await self.runtime.store.last_cursor())

    async def upgrade(self, path: str) -> ClientResponse:
        """A WebSocket handshake whose answer is read as plain HTTP: to see a refusal's
        status and JSON body (a 101 means the socket was accepted)."""
        return await self.client.get(
            path,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )


GatewayFactory = Callable[..., Awaitable[Gateway]]

SHUTDOWN_BOUND = 60.0


async def close_gateway(client: TestClient) -> None:
    """Shut a test gateway down; if that hangs, fail with every task's stack instead of
    hanging the run (a gateway that cannot stop is a bug worth a readable report)."""
    try:
        async with asyncio.timeout(SHUTDOWN_BOUND):
            await client.close()
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        raise AssertionError(
            f"the gateway did not shut down within {SHUTDOWN_BOUND} s:\n{stacks.getvalue()}"
        ) from None


async def start_gateway(
    config_text: str,
    clients: list[TestClient],
    *,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Gateway:
    """A real gateway app for `config_text` on loopback HTTP, with a manual clock, fast outbound
    retries and (unless `run_scheduler=True`) no background scheduler; its client is appended
    to `clients` for the fixture to close."""
    types = channel_types(get_plugin_manager())
    config = parse_config(config_text, "config.yaml", config_models(types), env=dict(env or {}))
    clock = ManualClock()
    opts = RuntimeOptions(
        retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002),
        **{"run_scheduler": False, **options},
    )
    app = create_app(config, types, clock=clock, options=opts)
    client = TestClient(TestServer(app))
    await client.start_server()
    clients.append(client)
    return Gateway(client, app[RUNTIME], clock)


@pytest.fixture(params=STORE_KINDS)
async def make_gateway(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[GatewayFactory]:
    """Gateways on each store kind: the whole agent API suite runs on SQLite and on Redis."""
    clients: list[TestClient] = []

    async def factory(config_text: str = BASE_CONFIG, db: str = "gw.db", **options: Any) -> Gateway:
        url = store_url(request, request.param, tmp_path / db)
        return await start_gateway(config_text.replace("sqlite:///{db}", url), clients, **options)

    yield factory
    for client in clients:
        await close_gateway(client)


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


Build = Callable[[], Awaitable[Gateway]]
"""Builds a gateway on `redis_alone` (BASE_CONFIG, manual clock, no scheduler)."""


@pytest.fixture
async def build(redis_alone: RedisServer) -> AsyncIterator[Build]:
    """Gateways on a redis-server of the test's own: outages are real (kill it), not faked."""
    clients: list[TestClient] = []

    async def factory() -> Gateway:
        return await start_gateway(BASE_CONFIG.replace("sqlite:///{db}", redis_alone.url), clients)

    yield factory
    for client in clients:
        await close_gateway(client)
