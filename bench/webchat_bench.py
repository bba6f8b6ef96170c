"""Web chat benchmark (issue 3): visitors' messages through to the agent's live stream.

A real `gateway serve` (SQLite, synchronous=FULL) runs in its own process; this process plays
V concurrent web chat visitors (one WebSocket each) and one agent on /api/v1/stream.

1. Throughput: every visitor sends as fast as its acks come back; we count the messages the
   agent receives per second (each one durably stored, routed, and fanned out).
2. Latency at half that rate: visitors send on a fixed schedule at 50 % of the measured
   throughput; p50/p99 from a visitor's send to the agent's receipt of `message.received`.

Both are compared with a bare aiohttp WebSocket echo server (own process) measured the same way
in the same run: messages/s of echo round trips, and echo latency at half its own maximum.

Run: python bench/webchat_bench.py [--visitors 50] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]

ECHO_SERVER = """
import sys
from aiohttp import web, WSMsgType

async def ws(request):
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
    return sock

app = web.Application()
app.router.add_get("/ws", ws)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# --- gateway -----------------------------------------------------------------------------------


async def gateway_run(base: str, visitors: int, seconds: float) -> tuple[float, list[float]]:
    async with aiohttp.ClientSession() as http:
        agent = await http.ws_connect(
            f"{base.replace('http', 'ws')}/api/v1/stream?access_token=bench"
        )
        await agent.receive()  # hello
        received: dict[str, float] = {}
        got = asyncio.Event()

        async def agent_reader() -> None:
            async for msg in agent:
                event = orjson.loads(msg.data)
                if event.get("type") == "message.received":
                    received[event["message"]["client_id"]] = time.perf_counter()
                    got.set()

        reader = asyncio.create_task(agent_reader())
        sockets = []
        for i in range(visitors):
            async with http.post(
                f"{base}/webchat/site/session", json={"display_name": f"v{i}"}
            ) as r:
                token = (await r.json())["token"]
            sockets.append(
                await http.ws_connect(f"{base.replace('http', 'ws')}/webchat/site/ws?token={token}")
            )

        # 1. closed loop: as fast as acks come back
        stop = time.perf_counter() + seconds
        counts = [0] * visitors

        async def closed_loop(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            n = 0
            while time.perf_counter() < stop:
                await ws.send_str(
                    orjson.dumps(
                        {"type": "message", "text": "hola", "client_id": f"t{i}-{n}"}
                    ).decode()
                )
                while orjson.loads((await ws.receive()).data).get("type") != "ack":
                    pass
                n += 1
            counts[i] = n

        before = len(received)
        started = time.perf_counter()
        await asyncio.gather(*(closed_loop(i, ws) for i, ws in enumerate(sockets)))
        total = sum(counts)
        while len(received) - before < total:
            got.clear()
            await asyncio.wait_for(got.wait(), 10)
        throughput = (len(received) - before) / (time.perf_counter() - started)

        # 2. open loop at half the rate
        latencies = await open_loop(sockets, throughput / 2, seconds, received, got, "l")
        reader.cancel()
        for ws in sockets:
            await ws.close()
        await agent.close()
        return throughput, latencies


async def open_loop(
    sockets: list[Any],
    rate: float,
    seconds: float,
    received: dict[str, float],
    got: asyncio.Event,
    prefix: str,
) -> list[float]:
    interval = len(sockets) / rate
    sent: dict[str, float] = {}

    async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for _ in ws:
            pass

    drains = [asyncio.create_task(drain(ws)) for ws in sockets] if prefix == "l" else []

    async def sender(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        start = time.perf_counter() + (i / len(sockets)) * interval
        n = 0
        while True:
            at = start + n * interval
            if at > start + seconds:
                return
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the load schedule itself
            cid = f"{prefix}{i}-{n}"
            sent[cid] = time.perf_counter()
            await ws.send_str(
                orjson.dumps({"type": "message", "text": "hola", "client_id": cid}).decode()
            )
            n += 1

    await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(sockets)))
    end = time.perf_counter() + 10
    while any(cid not in received for cid in sent) and time.perf_counter() < end:
        got.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(got.wait(), 1)
    for task in drains:
        task.cancel()
    return [(received[c] - t) * 1000 for c, t in sent.items() if c in received]


# --- bare echo ---------------------------------------------------------------------------------


async def echo_run(url: str, visitors: int, seconds: float) -> tuple[float, list[float]]:
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(url) for _ in range(visitors)]
        stop = time.perf_counter() + seconds
        counts = [0] * visitors

        async def closed_loop(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            n = 0
            while time.perf_counter() < stop:
                await ws.send_str(
                    orjson.dumps(
                        {"type": "message", "text": "hola", "client_id": f"t{i}-{n}"}
                    ).decode()
                )
                await ws.receive()
                n += 1
            counts[i] = n

        started = time.perf_counter()
        await asyncio.gather(*(closed_loop(i, ws) for i, ws in enumerate(sockets)))
        throughput = sum(counts) / (time.perf_counter() - started)
        received: dict[str, float] = {}
        got = asyncio.Event()

        async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                received[orjson.loads(msg.data)["client_id"]] = time.perf_counter()
                got.set()

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        latencies = await open_loop(sockets, throughput / 2, seconds, received, got, "e")
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
        return throughput, latencies


def write_config(tmp: Path, port: int) -> Path:
    digest = hashlib.sha256(b"bench").hexdigest()
    path = tmp / "config.yaml"
    path.write_text(
        textwrap.dedent(f"""
        server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
        store: {{url: "sqlite:///{tmp}/bench.db"}}
        # A load test is a flood from one address by design: no rate limits.
        channels: [{{name: site, type: webchat, no_agent_timeout: 5m,
                     session_rate_limit: null, message_rate_limit: null,
                     max_sockets_per_address: null}}]
        queues: [{{name: support}}]
        routing: [{{queue: support}}]
        agents: [{{id: bench, token_sha256: "{digest}", queues: [support], max_active: 5}}]
    """)
    )
    return path


async def main_async(visitors: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        echo_port, gw_port = free_port(), free_port()
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)], env=env)
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(write_config(tmp, gw_port)),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            await wait_ready(f"http://127.0.0.1:{echo_port}/ws")
            await wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
            e_rate, e_lat = await echo_run(f"ws://127.0.0.1:{echo_port}/ws", visitors, seconds)
            g_rate, g_lat = await gateway_run(f"http://127.0.0.1:{gw_port}", visitors, seconds)
        finally:
            for proc in (echo, gateway):
                proc.terminate()
                proc.wait(10)
    print(f"web chat, {visitors} visitors, {seconds:.0f} s per phase")
    print(f"  {'':34} {'msg/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"  {'bare aiohttp WebSocket echo':34} {e_rate:9.0f} {1:6.2f} "
        f"{statistics.median(e_lat):8.2f} {percentile(e_lat, 99):8.2f}"
    )
    print(
        f"  {'gateway visitor -> agent stream':34} {g_rate:9.0f} {g_rate / e_rate:6.2f} "
        f"{statistics.median(g_lat):8.2f} {percentile(g_lat, 99):8.2f}"
    )
    print(
        f"  latency measured at half of each one's own throughput; "
        f"{len(g_lat)} gateway samples, {len(e_lat)} echo samples"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.visitors, args.seconds))


if __name__ == "__main__":
    main()
