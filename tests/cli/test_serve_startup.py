"""`gateway serve` when it cannot start: the store cannot be opened, the port is taken.

Each is run as users run it (`python -m gateway.cli serve` in a subprocess) against the real
thing that is missing: a port with nothing listening, a port someone else holds, a path SQLite
cannot create. Each must end with one line on stderr naming what failed, exit status 1, no
traceback, no password, and nothing on stdout claiming the gateway serves.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.server.conftest import serve_command
from tests.store.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Zq81-very-secret"


def config_file(tmp_path: Path, store_url: str, startup_wait: str = "1s") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            server: {{host: 127.0.0.1, port: 8080}}
            store: {{url: "{store_url}", startup_wait: {startup_wait}}}
            channels: [{{name: site, type: webchat}}]
            queues: [{{name: support}}]
            """
        )
    )
    return path


def serve(config: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run `gateway serve` to its end (these all fail at start-up)."""
    return subprocess.run(
        serve_command(config, port),
        capture_output=True,
        text=True,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def assert_fails_with(result: subprocess.CompletedProcess[str], line: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "serving on" not in result.stdout and "inbox page" not in result.stdout, output
    # stderr may carry the JSON log lines of what did start; the error itself is one line.
    errors = [x for x in result.stderr.splitlines() if x.startswith("gateway:")]
    assert errors == [line], output


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port someone else is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_port_in_use(tmp_path: Path, held_port: int) -> None:
    config = config_file(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    result = serve(config, held_port)
    assert_fails_with(
        result, f"gateway: cannot listen on 127.0.0.1:{held_port}: address already in use"
    )


def test_redis_not_running(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    result = serve(config_file(tmp_path, url), free_port())
    assert_fails_with(result, f"gateway: cannot open the store {url}: connection refused")
    # It tried again during `startup_wait` (1 s here), saying so, before it gave up.
    waits = [line for line in result.stderr.splitlines() if '"store.waiting"' in line]
    assert len(waits) >= 2, result.stderr
    assert "connection refused" in waits[0].lower()


def test_redis_not_running_and_no_wait(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = serve(config_file(tmp_path, url, startup_wait="0s"), free_port())
    assert_fails_with(result, f"gateway: cannot open the store {url}: connection refused")
    assert '"store.waiting"' not in result.stderr


async def test_redis_started_after_the_gateway(tmp_path: Path) -> None:
    """The gateway comes up first (a compose file, a host's boot): it waits for Redis, logging
    why, and serves once Redis is there, instead of exiting."""
    server = RedisServer(tmp_path / "redis")  # not started yet: its port refuses
    http_port = free_port()
    config = config_file(tmp_path, server.url, startup_wait="60s")
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config, http_port),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        async with asyncio.timeout(30):
            while b'"store.waiting"' not in (line := await proc.stderr.readline()):
                assert line, "gateway serve ended without waiting for the store"
        await asyncio.to_thread(server.start)
        async with asyncio.timeout(30):
            while b"serving on" not in (line := await proc.stdout.readline()):
                assert line, "gateway serve ended instead of serving"
        url = f"http://127.0.0.1:{http_port}/readyz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200, await response.text()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await asyncio.to_thread(server.stop)


def test_redis_not_running_with_a_password_in_the_url(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://default:{PASSWORD}@127.0.0.1:{port}/0"
    result = serve(config_file(tmp_path, url), free_port())
    assert PASSWORD not in result.stdout + result.stderr
    assert_fails_with(
        result, f"gateway: cannot open the store redis://***@127.0.0.1:{port}/0: connection refused"
    )


def test_wrong_redis_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            client.config_set("requirepass", "the-right-one")
        finally:
            client.close()
        url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        result = serve(config_file(tmp_path, url), free_port())
    finally:
        server.stop()
    assert PASSWORD not in result.stdout + result.stderr
    assert_fails_with(
        result,
        f"gateway: cannot open the store redis://***@127.0.0.1:{server.port}/0: authentication"
        " failed (invalid username-password pair or user is disabled)",
    )


def test_sqlite_directory_cannot_be_created(tmp_path: Path) -> None:
    # A regular file where the database's directory should be: not creatable even for root.
    (tmp_path / "data").write_text("not a directory\n")
    path = tmp_path / "data" / "sub" / "gateway.db"
    url = f"sqlite:///{path}"
    result = serve(config_file(tmp_path, url), free_port())
    assert_fails_with(
        result,
        f"gateway: cannot open the store {url}: not a directory: {tmp_path / 'data' / 'sub'}",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_sqlite_directory_not_writable(tmp_path: Path) -> None:
    directory = tmp_path / "readonly"
    directory.mkdir()
    directory.chmod(0o555)
    url = f"sqlite:///{directory / 'gateway.db'}"
    try:
        result = serve(config_file(tmp_path, url), free_port())
    finally:
        directory.chmod(0o755)
    assert_fails_with(result, f"gateway: cannot open the store {url}: unable to open database file")


def test_sqlite_file_cannot_be_opened(tmp_path: Path) -> None:
    # /proc takes no new files, whoever asks.
    result = serve(config_file(tmp_path, "sqlite:////proc/gateway-test.db"), free_port())
    assert_fails_with(
        result,
        "gateway: cannot open the store sqlite:////proc/gateway-test.db: unable to open"
        " database file",
    )


def test_serving_is_announced_only_once_it_listens(tmp_path: Path) -> None:
    """The 'serving on' line comes after the socket is bound: a connection right after it is
    accepted, with no retry."""
    config = config_file(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    port = free_port()
    proc = subprocess.Popen(
        serve_command(config, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving on" in line:
                break
        assert lines and "serving on http://127.0.0.1" in lines[-1], lines
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
