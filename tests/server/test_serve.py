"""`gateway serve` as a process: the shipped config, the README's curl walk-through, SIGTERM."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.store.sqlite import SqliteStore
from tests.server.conftest import ROOT, ServeProcess


async def test_shipped_config_serves_the_demo_chat(shipped_gateway: ServeProcess) -> None:
    banner = "".join(shipped_gateway.stdout_lines)
    assert "/webchat/site/demo" in banner
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{shipped_gateway.base}/webchat/site/demo") as resp:
            assert resp.status == 200
            assert 'data-channel="site"' in await resp.text()
        async with http.get(f"{shipped_gateway.base}/webchat/widget.js") as resp:
            assert resp.status == 200


def readme_walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From zero to an agent accepting a web chat, with curl", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "the README lost its curl walk-through"
    return blocks[0]


async def test_readme_curl_walkthrough_works(shipped_gateway: ServeProcess) -> None:
    if shutil.which("curl") is None:
        pytest.fail("install it: apt-get install -y curl")
    script = readme_walkthrough().replace("http://127.0.0.1:8080", shipped_gateway.base)
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    output = out.decode()
    assert proc.returncode == 0, err.decode()
    assert '"state":"active"' in output  # accepted
    assert '"status":"queued"' in output  # the reply was taken
    assert "¿En qué te ayudo?" in output  # the visitor sees it
    assert '"state":"closed"' in output


async def test_sigterm_finishes_in_flight_and_loses_nothing_acknowledged(
    shipped_gateway: ServeProcess, tmp_path: Path
) -> None:
    base = shipped_gateway.base
    acknowledged: list[str] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/webchat/site/session", json={}) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}

        async def send(i: int) -> None:
            try:
                async with http.post(
                    f"{base}/webchat/site/messages",
                    json={"text": f"m{i}", "client_id": f"c{i}"},
                    headers=headers,
                ) as resp:
                    if resp.status == 201:
                        acknowledged.append((await resp.json())["message"]["id"])
                        if len(acknowledged) >= 10:
                            some_acknowledged.set()
            except aiohttp.ClientError:
                pass  # not acknowledged: the client would retry with the same client_id

        some_acknowledged = asyncio.Event()
        sends = [asyncio.create_task(send(i)) for i in range(200)]
        await asyncio.wait_for(some_acknowledged.wait(), 30)
        shipped_gateway.proc.send_signal(signal.SIGTERM)  # the rest are in flight or queued
        await asyncio.gather(*sends)
    code = await asyncio.wait_for(shipped_gateway.proc.wait(), 40)
    assert code == 0
    assert acknowledged, "nothing was acknowledged before the shutdown"
    store = SqliteStore(tmp_path / "var" / "gateway.db")
    await store.open()
    try:
        for message_id in acknowledged:
            assert await store.get_message(message_id) is not None, message_id
    finally:
        await store.close()


async def test_start_and_stop_are_logged_with_where_it_listens(
    shipped_gateway: ServeProcess,
) -> None:
    """Ops audit: the start line had no address or node, and "serving on" was only printed
    text on stdout. The log (JSON lines on stderr) now says where it listens, as which node,
    when it serves, and that it stopped."""
    shipped_gateway.proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(shipped_gateway.proc.communicate(), 40)
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    by_event = {line["event"]: line for line in lines}
    starting = by_event["server.starting"]
    port = int(shipped_gateway.base.rsplit(":", 1)[1])
    assert (starting["host"], starting["port"], starting["store"]) == ("127.0.0.1", port, "sqlite")
    assert starting["node"]
    assert by_event["server.serving"]["url"] == shipped_gateway.base
    order = [line["event"] for line in lines if line["event"].startswith("server.")]
    assert order[:2] == ["server.starting", "server.serving"]
    assert order[-2:] == ["server.stopping", "server.stopped"]


async def test_sighup_stops_the_gateway_as_sigterm_does(shipped_gateway: ServeProcess) -> None:
    """Ops audit: SIGHUP killed it on the spot (exit 129, no stop logged, sockets dropped)."""
    shipped_gateway.proc.send_signal(signal.SIGHUP)
    _, stderr = await asyncio.wait_for(shipped_gateway.proc.communicate(), 40)
    assert shipped_gateway.proc.returncode == 0
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    order = [line["event"] for line in lines if line["event"].startswith("server.")]
    assert order[-3:] == ["server.hangup", "server.stopping", "server.stopped"]
