"""A real gateway on a loopback TCP port, and Debian's Chromium driven through Playwright.

Shared by the browser tests and `docs/screenshots.py`. The gateway runs in the test's own event
loop with a `ManualClock` (started at the wall-clock time, so the page's "waiting for 3 min"
reads sensibly) and no background scheduler: a test makes a conversation inactive by advancing
the clock and calling `runtime.scheduler.run_once()`.

Customers arrive the way their channel brings them: web chat visitors through the widget or the
visitor HTTP API, WhatsApp and email messages through the ingest path their adapters call
(`runtime.ingestor.message`), because those providers cannot be reached from a test.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web
from playwright.async_api import Browser, Playwright

from gateway.app import create_app
from gateway.appkeys import RUNTIME
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.ids import new_id
from gateway.model import Contact, InboundMessage
from gateway.outbound import RetryPolicy
from gateway.pluginmanager import channel_types, config_models, get_plugin_manager
from gateway.runtime import Runtime, RuntimeOptions

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Shop pages served by Playwright's router embed the widget from the gateway on loopback:
    # in production both are public sites, so the checks Chromium makes between a public page
    # and a loopback server (Local/Private Network Access) do not apply there.
    "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
]
TOKENS = {"maria": "tok-maria", "jose": "tok-jose", "ana": "tok-ana"}


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# WhatsApp and email point at a closed loopback port: sends fail fast (a visible ✗), the IMAP
# reader just keeps retrying in the background; nothing ever leaves the machine.
CONFIG = f"""
server: {{public_url: "http://127.0.0.1"}}
store: {{url: "sqlite:///{{db}}"}}
presence: {{agent_disconnect_grace: 30s}}
channels:
  - {{name: site, type: webchat, no_agent_timeout: 5m, title: "Chat with Acme"}}
  - {{name: wa-main, type: whatsapp, provider: twilio,
      account_sid: AC00000000000000000000000000000000, auth_token: not-a-real-token,
      from: "whatsapp:+14155238886", api_base_url: "http://127.0.0.1:9", request_timeout: 2s}}
  - {{name: support-mail, type: email, address: support@example.com,
      imap: {{host: 127.0.0.1, port: 9, tls: none, username: support, password: x}},
      smtp: {{host: 127.0.0.1, port: 9, tls: none}}}}
queues:
  - {{name: support, distribution: manual}}
  - {{name: sales, distribution: manual}}
routing:
  - {{if: {{text: "(?i)price|precio"}}, queue: sales}}
  - {{queue: support}}
agents:
  - {{id: maria, name: Maria Malheiro, token_sha256: "{_sha(TOKENS["maria"])}",
      queues: [support, sales], max_active: 5}}
  - {{id: jose, name: José, token_sha256: "{_sha(TOKENS["jose"])}",
      queues: [support, sales], max_active: 5}}
  - {{id: ana, name: Ana, token_sha256: "{_sha(TOKENS["ana"])}", queues: [support], max_active: 5}}
"""


def require_chromium() -> None:
    """Fail (never skip) when the browser is missing: these flows are part of the suite."""
    if not CHROMIUM.exists():
        raise AssertionError(
            f"Chromium is missing at {CHROMIUM}: install it: apt-get install -y chromium"
        )


async def launch(playwright: Playwright) -> Browser:
    require_chromium()
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@dataclass
class LiveGateway:
    """The running gateway: its URL, its runtime and clock, and an HTTP client for the API."""

    url: str
    runtime: Runtime
    clock: ManualClock
    http: ClientSession

    def auth(self, agent: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[agent]}"}

    async def get(self, agent: str, path: str) -> Any:
        async with self.http.get(self.url + path, headers=self.auth(agent)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, agent: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.post(self.url + path, json=body or {}, headers=self.auth(agent)) as r:
            return r.status, (await r.json() if r.status != 204 else None)

    async def waiting(self, agent: str = "maria") -> list[dict[str, Any]]:
        data = await self.get(agent, "/api/v1/inbox?state=waiting")
        conversations: list[dict[str, Any]] = data["conversations"]
        return conversations

    async def visitor(self, name: str | None, text: str) -> str:
        """A web chat visitor opens a session and writes (what the widget does); returns token."""
        async with self.http.post(
            self.url + "/webchat/site/session", json={"display_name": name} if name else {}
        ) as resp:
            assert resp.status == 201
            token: str = (await resp.json())["token"]
        await self.visitor_says(token, text)
        return token

    async def visitor_says(self, token: str, text: str) -> None:
        async with self.http.post(
            self.url + "/webchat/site/messages",
            json={"text": text, "client_id": new_id("cl")},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 201, await resp.text()

    async def whatsapp(self, address: str, name: str | None, text: str) -> None:
        """A WhatsApp message, handed to ingest the way the WhatsApp adapter does."""
        await self.runtime.ingestor.message(
            InboundMessage(
                channel="wa-main",
                channel_type="whatsapp",
                provider="twilio",
                provider_message_id=new_id("SM"),
                contact=Contact(address, name),
                sent_at=self.clock.now(),
                text=text,
            )
        )

    async def email(self, address: str, name: str | None, subject: str, text: str) -> None:
        """An email, handed to ingest the way the email adapter does after parsing it."""
        await self.runtime.ingestor.message(
            InboundMessage(
                channel="support-mail",
                channel_type="email",
                provider="imap",
                provider_message_id=f"<{new_id('mid')}@example.com>",
                contact=Contact(address, name),
                sent_at=self.clock.now(),
                text=text,
                subject=subject,
            )
        )

    async def settle(self) -> None:
        """Wait until deliveries in flight finished and the hub fanned out every event."""
        await self.runtime.outbound.drain()
        await self.runtime.hub.wait_past(await self.runtime.store.last_cursor())


@asynccontextmanager
async def live_gateway(
    db: Path, config: str = CONFIG, start: datetime | None = None, port: int = 0
) -> AsyncIterator[LiveGateway]:
    """Serve the gateway on 127.0.0.1 on a free port (or on `port`: a restart of a gateway that
    served there, on the same `db`) until the block ends; the clock starts at `start` (default:
    now). Leaving the block is a node's shutdown: sockets close with 1001 (going away)."""
    types = channel_types(get_plugin_manager())
    parsed = parse_config(config.replace("{db}", str(db)), "config.yaml", config_models(types))
    clock = ManualClock(start or datetime.now(UTC).replace(microsecond=0))
    options = RuntimeOptions(
        retry=RetryPolicy(attempts=2, initial=0.001, maximum=0.002), run_scheduler=False
    )
    app = create_app(parsed, types, clock=clock, options=options)
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with ClientSession() as http:
            yield LiveGateway(f"http://{host}:{port}", app[RUNTIME], clock, http)
    finally:
        await runner.cleanup()
