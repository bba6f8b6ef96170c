"""Several real `gateway serve` processes on one real redis-server, and helpers to drive them.

Each node is `python -m gateway.cli serve --config <tmp config> --port <free port>`, started
as users start it, with its log in a file (a pipe nobody reads would block it). A node counts
as up when its /readyz answers 200. Agents and visitors talk to the nodes over HTTP and
WebSockets only; events are awaited through `/api/v1/events?wait=` or an agent's stream,
never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.store.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]

AGENTS = {
    # id: (queues, max_active)
    "maria": (["support", "sales"], 2),
    "jose": (["support", "sales"], 2),
    "bob": (["support"], 5),
    "carl": (["support"], 5),
    "pia": (["support"], 5),
    "kai": (["support"], 5),
    "d1": (["auto"], 1),
    "d2": (["auto"], 2),
    "lina": (["lonely"], 5),
}
GRACE_SECONDS = 2


def token(agent: str) -> str:
    return f"tok-{agent}"


def config_text(redis_url: str) -> str:
    agents = "\n".join(
        f"  - {{id: {a}, name: {a}, token_sha256: "
        f'"{hashlib.sha256(token(a).encode()).hexdigest()}", queues: [{", ".join(q)}],'
        f" max_active: {m}}}"
        for a, (q, m) in AGENTS.items()
    )
    return f"""
server: {{host: 127.0.0.1, port: 8080, public_url: "http://127.0.0.1:8080"}}
store: {{url: "{redis_url}"}}
presence: {{agent_disconnect_grace: {GRACE_SECONDS}s}}
channels:
  - {{name: site, type: webchat, no_agent_timeout: 5m}}
  - {{name: quick, type: webchat, no_agent_timeout: 1s}}
queues:
  - {{name: support, distribution: manual}}
  - {{name: sales, distribution: automatic, strategy: least_busy}}
  - {{name: auto, distribution: automatic, strategy: least_busy}}
  - {{name: lonely, distribution: manual}}
routing:
  - {{if: {{channel: quick}}, queue: lonely}}
  - {{if: {{text: "(?i)^auto"}}, queue: auto}}
  - {{if: {{text: "(?i)price"}}, queue: sales}}
  - {{queue: support}}
agents:
{agents}
integrators:
  - {{name: audit, token_sha256: "{hashlib.sha256(token("audit").encode()).hexdigest()}"}}
"""


class Node:
    """One `gateway serve` process."""

    def __init__(self, config: Path, workdir: Path, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "gateway.cli", "serve",
                "--config", str(config), "--port", str(self.port), "--log-level", "info",
            ],
            cwd=workdir,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll /readyz until 200 (the process imports, connects to Redis, starts channels)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"node {self.name} not ready: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to say its sockets closed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class Cluster:
    """Gateway nodes sharing one Redis database."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.workdir = workdir
        self.config = workdir / "config.yaml"
        self.config.write_text(config_text(redis_url))
        self.nodes: list[Node] = []

    def start(self, count: int) -> list[Node]:
        fresh = [
            Node(self.config, self.workdir, f"node{len(self.nodes) + i}") for i in range(count)
        ]
        self.nodes.extend(fresh)
        for node in fresh:  # started side by side, awaited one by one
            node.wait_ready()
        return fresh

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(server: RedisServer, db: int, workdir: Path, count: int) -> Cluster:
    server.flush(db)
    cluster = Cluster(server.url_for(db), workdir)
    cluster.start(count)
    return cluster


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Three nodes for the module (database 1 of the session's redis-server)."""
    running = start_cluster(redis_server, 1, tmp_path_factory.mktemp("cluster"), 3)
    yield running
    running.stop()


# driving the nodes -----------------------------------------------------------------------------


def auth(agent: str) -> dict[str, str]:
    """Bearer headers of an agent, or of `audit`: the integrator that reads every event."""
    return {"Authorization": f"Bearer {token(agent)}"}


class Visitor:
    """A web chat visitor; any node accepts its token (the signing secret is cluster-wide)."""

    def __init__(self, http: aiohttp.ClientSession, channel: str, token: str) -> None:
        self.http = http
        self.channel = channel
        self.token = token
        self._sent = 0

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, node: Node, name: str, channel: str = "site"
    ) -> Visitor:
        async with http.post(
            f"{node.base}/webchat/{channel}/session", json={"display_name": name}
        ) as resp:
            assert resp.status == 201, await resp.text()
            return cls(http, channel, (await resp.json())["token"])

    async def say(self, node: Node, text: str) -> dict[str, Any]:
        """Send a message through `node`; return its ack (201 means durably stored)."""
        self._sent += 1
        async with self.http.post(
            f"{node.base}/webchat/{self.channel}/messages",
            json={"text": text, "client_id": f"c{self._sent}-{time.monotonic_ns()}"},
            headers={"Authorization": f"Bearer {self.token}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


async def end_cursor(http: aiohttp.ClientSession, node: Node) -> str | None:
    """The cursor of the last event in the log (page through everything)."""
    cursor = None
    while True:
        query = f"?limit=1000&after={cursor}" if cursor else "?limit=1000"
        async with http.get(f"{node.base}/api/v1/events{query}", headers=auth("audit")) as resp:
            body = await resp.json()
        if not body["events"]:
            return cursor
        cursor = body["cursor"]


async def collect_events(
    http: aiohttp.ClientSession,
    node: Node,
    after: str | None,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
) -> list[dict[str, Any]]:
    """Long-poll /api/v1/events from `after` until `done(events so far)` or the timeout."""
    events: list[dict[str, Any]] = []
    cursor = after
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(events):
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        wait = max(1, min(5, int(remaining)))
        query = f"?wait={wait}&limit=1000" + (f"&after={cursor}" if cursor else "")
        async with http.get(f"{node.base}/api/v1/events{query}", headers=auth("audit")) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        events.extend(body["events"])
        cursor = body["cursor"]
    return events


async def open_stream(
    http: aiohttp.ClientSession, node: Node, agent: str, after: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    query = f"?access_token={token(agent)}" + (f"&after={after}" if after else "")
    ws = await http.ws_connect(f"{node.base}/api/v1/stream{query}")
    hello = await receive(ws, lambda f: f["type"] == "hello")
    assert hello["agent"] == agent
    return ws


async def receive(
    ws: aiohttp.ClientWebSocketResponse,
    wanted: Callable[[dict[str, Any]], bool],
    timeout: float = 10,
) -> dict[str, Any]:
    """Read frames until one matches."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frame: dict[str, Any] = json.loads(msg.data)
            if wanted(frame):
                return frame
