"""Real `gateway serve` processes on free ports, for tests of the process as users run it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, base: str) -> None:
        self.proc = proc
        self.base = base
        self.stdout_lines: list[str] = []

    async def ready(self) -> None:
        """Wait for the 'serving on' line the CLI prints once the app is set up, then /readyz."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "gateway serve exited before it was ready"
                self.stdout_lines.append(line)
                if "serving on" in line:
                    break
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"{self.base}/readyz") as resp:
                            if resp.status == 200:
                                return
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)  # the socket opens right after the banner


def serve_command(config: Path, port: int) -> list[str]:
    """`gateway serve` on `config` and `port`, as a user runs it (with this interpreter)."""
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
    ]


async def start_serve(config: Path, cwd: Path, port: int) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        *serve_command(config, port),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    serve = ServeProcess(proc, f"http://127.0.0.1:{port}")
    await serve.ready()
    return serve


@pytest.fixture
async def shipped_gateway(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    """The shipped config.yaml, run from a scratch directory (its SQLite file lands there)."""
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.yaml").read_text())
    serve = await start_serve(config, tmp_path, free_port())
    yield serve
    if serve.proc.returncode is None:
        serve.proc.kill()
        await serve.proc.wait()
