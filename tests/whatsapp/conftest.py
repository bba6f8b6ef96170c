"""Fixtures for the whatsapp adapter tests: a shared client session and a loopback server
that routes `/webhooks/{name}` to an adapter, as the gateway does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from plugins.whatsapp import WhatsAppAdapter
from tests.whatsapp.fakes import FakeGraph, FakeTwilio

Serve = Callable[[WhatsAppAdapter], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The stand-in for the gateway's shared session (adapters never create their own)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def serve(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> Serve:
    """Start a real HTTP server on loopback that hands webhooks to `adapter`."""

    async def start(adapter: WhatsAppAdapter) -> TestClient[web.Request, web.Application]:
        async def webhook(request: web.Request) -> web.StreamResponse:
            assert request.match_info["name"] == adapter.name
            return await adapter.handle_webhook(request)

        app = web.Application()
        app.router.add_route("*", "/webhooks/{name}", webhook)
        return await aiohttp_client(app)

    return start


@pytest.fixture
async def fake_twilio(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[FakeTwilio]:
    """A stand-in Twilio REST API on loopback; point `api_base_url` at `fake.base_url`."""
    fake = FakeTwilio()
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.release()  # hanging sends answer now, so the server closes without waiting on them


@pytest.fixture
async def fake_graph(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[FakeGraph]:
    """A stand-in Graph API on loopback; point `api_base_url` at `fake.base_url`."""
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.release()
