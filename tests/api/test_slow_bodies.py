"""A body that never finishes arriving: 408 and the connection closed, not a handler (and a
connection) held forever. The limit is made short here; it is 30 s in production."""

from __future__ import annotations

import asyncio

import pytest

import gateway.bodies
from tests.api.conftest import Gateway

LIMIT = 0.3


async def stalled(host: str, port: int, head: bytes) -> tuple[bytes, bool]:
    """Send `head` (headers declaring 100 body bytes) and five bytes of body, then nothing.
    Return the answer and whether the server closed the connection after it."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head + b'Content-Length: 100\r\n\r\n{"te')
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read(65536)
        closed = await reader.read(1) == b""
    writer.close()
    return answer, closed


@pytest.fixture(autouse=True)
def short_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.bodies, "BODY_TIMEOUT", LIMIT)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /webchat/site/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        b"POST /api/v1/conversations/c_1/transfer HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer tok-maria\r\n",
    ],
)
async def test_a_stalled_body_is_a_408_on_the_api_and_web_chat(gw: Gateway, head: bytes) -> None:
    server = gw.client.server
    answer, closed = await stalled(str(server.host), int(server.port or 0), head)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"request_timeout"' in answer and closed


async def test_a_client_gone_mid_body_is_one_line_not_a_traceback() -> None:
    """aiohttp raises ConnectionResetError from a body read when the client hangs up mid-body
    (a real process logged that as an internal error with a traceback). The handler here
    raises it the way such a read does; the middleware is the gateway's own."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from structlog.testing import capture_logs

    from gateway.api.http import request_context

    async def hung_up(request: web.Request) -> web.Response:
        raise ConnectionResetError("Connection lost")

    app = web.Application(middlewares=[request_context])
    app.router.add_post("/upload", hung_up)
    async with TestClient(TestServer(app)) as client:
        with capture_logs() as logs:
            resp = await client.post("/upload", data=b"x")
    assert resp.status == 400
    assert [e["event"] for e in logs] == ["http.client_disconnected"]
    assert all("exc_info" not in e and "exception" not in e for e in logs)
