"""Requests aiohttp cannot even parse: a 400 and one JSON log line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import signal

from tests.server.conftest import ServeProcess

GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"POST /webhooks/site HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /webhooks/site HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
]


async def raw_request(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read(200)
    writer.close()
    return answer


async def refused_then_stopped(gateway: ServeProcess, requests: list[bytes]) -> str:
    """Send each raw request (each must get a 400), stop the gateway, return its log."""
    for data in requests:
        answer = await raw_request(gateway.base, data)
        assert answer.split(b" ", 2)[1] == b"400", answer
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.stderr is not None
    _, err = await asyncio.wait_for(gateway.proc.communicate(), 30)
    return err.decode()


async def test_unparseable_requests_get_400_and_a_log_line_without_traceback(
    shipped_gateway: ServeProcess,
) -> None:
    text = await refused_then_stopped(shipped_gateway, GARBAGE)
    lines = text.splitlines()
    assert "Traceback" not in text
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    malformed = [r for r in records if r["event"] == "http.malformed_request"]
    # aiohttp does not log a request line of garbage at all (scanners, TLS on a plain port).
    assert len(malformed) == len(GARBAGE) - 1, records
    assert {r["level"] for r in malformed} == {"warning"}
    assert all(r["logger"] == "aiohttp.server" and r["reason"] for r in malformed)


async def test_a_token_that_is_not_utf8_is_unauthorized_not_an_error(
    shipped_gateway: ServeProcess,
) -> None:
    for path in (b"/api/v1/events", b"/api/v1/inbox", b"/api/v1/stream"):
        data = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
        answer = await raw_request(shipped_gateway.base, data)
        assert answer.split(b" ", 2)[1] == b"401", answer


SECRET = "agent-secret-token-1234"
OVERSIZED_WITH_SECRETS = [
    # an over-long URL carrying an agent's token, and Meta's verify token
    b"GET /api/v1/stream?access_token="
    + SECRET.encode()
    + b"&pad="
    + b"a" * 9000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /webhooks/wa?hub.mode=subscribe&hub.verify_token="
    + SECRET.encode()
    + b"&p="
    + b"a" * 9000
    + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    # an over-long Authorization header
    b"GET /api/v1/inbox HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + SECRET.encode()
    + b"a" * 9000
    + b"\r\n\r\n",
    # a malformed header that starts with the secret
    b"GET /api/v1/inbox HTTP/1.1\r\nHost: x\r\nBearer " + SECRET.encode() + b"\r\n\r\n",
]


async def test_a_malformed_request_is_logged_without_quoting_it(
    shipped_gateway: ServeProcess,
) -> None:
    """aiohttp's messages quote the line they refused: the log says what was wrong only."""
    text = await refused_then_stopped(shipped_gateway, OVERSIZED_WITH_SECRETS)
    assert SECRET not in text
    records = [json.loads(line) for line in text.splitlines()]
    malformed = [r for r in records if r["event"] == "http.malformed_request"]
    assert len(malformed) == len(OVERSIZED_WITH_SECRETS), records
    assert all(r["reason"] and r["error"] for r in malformed)


async def test_a_body_declared_past_the_limit_is_refused_before_it_is_read(
    shipped_gateway: ServeProcess,
) -> None:
    """A Content-Length over `server.max_body_bytes` with less sent held the connection
    until the body time-out (30 s, then 408): now a 413 in our shape, at once (ops audit)."""
    for path in (b"/webchat/site/session", b"/webhooks/site", b"/api/v1/inbox"):
        data = (
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999999\r\n\r\n{}\n"
        )
        host, port = shipped_gateway.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):  # far less than the 30 s body time-out
            answer = await reader.read()  # and the connection is closed after it
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"413", answer
        assert json.loads(body)["error"]["code"] == "payload_too_large"
