"""Benchmark (issue 4): signed Meta webhooks through the real gateway vs a bare aiohttp handler.

Each request is a correctly signed Cloud API webhook carrying one text message, with a distinct
wamid and a distinct contact, so every one is verified, parsed, deduplicated (a lookup that
finds nothing), durably stored on the SQLite store (synchronous=full by default), routed into
a new waiting conversation and acknowledged. The same requests, with the same load generator,
go to a bare aiohttp handler that reads the body and answers 200: the ratio of the two rates is
the cost of doing the work. Target: gateway >= 0.4 x bare.

Both servers run in their own subprocess, started the way they run for real (`gateway serve`
with a config file; the bare one with `web.run_app`), each pinned to a CPU other than the load
generator's when the machine has more than one. The load generator is wrk when it is installed
(`apt-get install wrk`): N connections for a few seconds per run, posting pre-signed webhooks
from a file. Without wrk it is a small aiohttp client, bounded in request count and in time; it
spends more CPU per request than the bare handler does, so it caps the baseline and flatters
the ratio (about 0.33 where wrk measures 0.19; `--load python` to compare). Three more reference
servers show where the cost lies (`serve_reference`): `verify` adds the signature check and the
JSON parse to the bare handler, `commit` adds a durable group-committed row per message, `rows`
writes instead every row the gateway writes for the message, with none of its logic. Each
round warms every server up, then measures them back to back with fresh message ids; the table
reports every round and the median gateway ratio. After the run the gateway is stopped and its
SQLite file is read: every acknowledged message must be there (acknowledged means durable).

    python bench/webhook_bench.py                      # defaults: 3 rounds, 32 conns, wrk
    python bench/webhook_bench.py --load python        # our Python client (4000 per run)
    python bench/webhook_bench.py --requests 10000 --concurrency 64 --rounds 5
    python bench/webhook_bench.py --profile /tmp/gw.txt   # py-spy on the gateway, one round
    python bench/webhook_bench.py --contacts 400      # follow-ups: ~10 messages per conversation
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import aiohttp
import orjson
from common import add_load_argument, free_port, resolve_load, signed_meta_text

APP_SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "1065400000000"
CHANNEL = "wa-bench"
ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, public_url: "https://gw.bench.example"}}
store: {{url: "sqlite:///{db}", synchronous: {synchronous}}}
channels:
  - {{name: {channel}, type: whatsapp, provider: cloud_api, phone_number_id: "{phone}",
     access_token: ${{WA_TOKEN}}, app_secret: ${{WA_APP_SECRET}}, verify_token: ${{WA_VERIFY}}}}
queues:
  - {{name: support, distribution: manual}}
routing:
  - {{queue: support}}
agents:
  - {{id: maria, name: Maria, token_sha256: "{token}", queues: [support], max_active: 5}}
"""


# --- the requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    body: bytes
    headers: dict[str, str]


def webhook(batch: int, i: int, now: int, contacts: int = 0) -> Request:
    """One signed Cloud API webhook with one text message: from a contact of its own, or with
    `contacts` set, from one of that many (follow-ups on their open conversations)."""
    phone = f"55{batch:03d}{i % contacts if contacts else i:09d}"
    body, signature = signed_meta_text(
        app_secret=APP_SECRET,
        waba_id="102290129340398",
        phone_number_id=PHONE_NUMBER_ID,
        phone=phone,
        name=f"Cliente {i}",
        wamid=f"wamid.BENCH{batch:03d}{i:09d}",
        text=f"Hola, quería saber del pedido {i}",
        timestamp=now,
    )
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    return Request(body, headers)


def requests_for(batch: int, count: int, contacts: int = 0) -> list[Request]:
    """`count` webhooks whose wamids and contacts no other batch uses."""
    now = int(time.time())
    return [webhook(batch, i, now, contacts) for i in range(count)]


# --- the load generator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0
    """CPU time (all threads) the server process used during the run: unlike the rate, it
    hardly moves when other work shares the machine, so it tells noise from regressions."""
    threads: dict[int, float] = field(default_factory=dict)
    """The same CPU time per thread (native id: event loop, SQLite writer, readers, ...)."""
    wrapped: int = 0
    """wrk only: how often it ran out of distinct requests and started over (repeats)."""
    reported: tuple[float, float] | None = None
    """wrk only: its own p50 and p99 latency (seconds); it does not hand out each one."""

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / self.ok if self.ok else 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if self.reported is not None:
            return (self.reported[0] if q <= 0.5 else self.reported[1]) * 1000
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cpu_time(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread (by native id) of a process (Linux /proc; empty elsewhere):
    where a server's time goes, without a profiler's overhead."""
    totals: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                totals[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf(
                    "SC_CLK_TCK"
                )
    return totals


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native id, from `py-spy dump` (empty if it is not installed):
    the OS only knows every thread of the process as "python"."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return {}
    try:
        dump = subprocess.run(
            [py_spy, "dump", "--json", "--pid", str(pid)], capture_output=True, timeout=30
        )
        threads = orjson.loads(dump.stdout)
    except (subprocess.SubprocessError, orjson.JSONDecodeError):
        return {}
    return {
        int(t["os_thread_id"]): str(t.get("thread_name") or t["os_thread_id"])
        for t in threads
        if t.get("os_thread_id")
    }


async def load(
    name: str,
    url: str,
    requests: list[Request],
    concurrency: int,
    time_limit: float,
    pid: int | None = None,
) -> Result:
    """POST every request (or as many as fit in `time_limit`) over `concurrency` connections."""
    cpu_before = cpu_time(pid) if pid else 0.0
    threads_before = thread_cpu(pid) if pid else {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0, "sent": 0}
    position = iter(range(len(requests)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + time_limit

        async def worker() -> None:
            for i in position:
                if time.perf_counter() > deadline:
                    return
                request = requests[i]
                counts["sent"] += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=request.body, headers=request.headers) as r:
                        await r.read()
                        good = r.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    good = False
                latencies.append(time.perf_counter() - t0)
                counts["ok" if good else "errors"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    cpu = cpu_time(pid) - cpu_before if pid else 0.0
    threads = {
        thread: seconds - threads_before.get(thread, 0.0)
        for thread, seconds in (thread_cpu(pid) if pid else {}).items()
    }
    return Result(
        name, counts["sent"], counts["ok"], counts["errors"], seconds, latencies, cpu, threads
    )


# --- wrk, the fast load generator -------------------------------------------------------------

WRK_SCRIPT = """
-- Posts the signed webhooks of REQUESTS_FILE (one per line: signature TAB body) in order.
-- Past the end it starts over and counts it: the bench refuses a gateway run that wrapped,
-- because a repeated wamid is a duplicate, which the gateway answers without storing.
local entries = {}
for line in io.lines(REQUESTS_FILE) do
  local tab = line:find("\\t", 1, true)
  entries[#entries + 1] = {line:sub(1, tab - 1), line:sub(tab + 1)}
end
local next_entry = 0
wrapped = 0
request = function()
  next_entry = next_entry + 1
  if next_entry > #entries then
    next_entry = 1
    wrapped = wrapped + 1
  end
  local entry = entries[next_entry]
  local headers = {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = entry[1]}
  return wrk.format("POST", nil, headers, entry[2])
end

local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do wraps = wraps + thread:get("wrapped") end
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d micros=%d errors=%d p50=%d p99=%d wrapped=%d\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), wraps))
end
"""


async def load_wrk(
    name: str,
    url: str,
    requests: list[Request],
    concurrency: int,
    seconds: int,
    work: Path,
    pid: int | None = None,
) -> Result:
    """Drive `url` with wrk (C, one thread) for `seconds` with the given signed requests.

    Our Python load generator costs more CPU per request than the bare handler it drives, so
    it caps the baseline (about 4,000 req/s here, where wrk gets the same handler to about
    7,500): a ratio measured with it flatters the gateway. wrk shows the real distance.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or run with --load python)")
    data = work / f"{name}-requests.tsv"
    with data.open("wb") as out:
        for request in requests:
            signature = request.headers["X-Hub-Signature-256"].encode()
            out.write(signature + b"\t" + request.body + b"\n")
    # One script per run: redis_bench starts one wrk per node at once, and with one shared
    # file a wrk could read the script while the next run rewrote it (every request refused
    # as unsigned, or a Lua error).
    script = work / f"{name}-wrk.lua"
    script.write_text(f"REQUESTS_FILE = {str(data)!r}\n" + WRK_SCRIPT)
    cpu_before = cpu_time(pid) if pid else 0.0
    threads_before = thread_cpu(pid) if pid else {}
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), url]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    cpu = cpu_time(pid) - cpu_before if pid else 0.0
    threads = {
        thread: spent - threads_before.get(thread, 0.0)
        for thread, spent in (thread_cpu(pid) if pid else {}).items()
    }
    lines = [line for line in output.decode().splitlines() if line.startswith("WRK ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({process.returncode}):\n{output.decode()}")
    summary = {key: int(value) for key, value in (f.split("=") for f in lines[-1].split()[1:])}
    ok = summary["requests"] - summary["errors"]
    return Result(
        name,
        summary["requests"],
        ok,
        summary["errors"],
        summary["micros"] / 1e6,
        [],
        cpu,
        threads,
        wrapped=summary["wrapped"],
        reported=(summary["p50"] / 1e6, summary["p99"] / 1e6),
    )


# --- the servers -------------------------------------------------------------------------------


def pin(cpu: int | None) -> list[str]:
    """A `taskset` prefix that pins a child to one CPU (nothing if not possible)."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


REFERENCES = ("bare", "verify", "commit", "rows", "lean")
"""The reference servers, each doing a little more of a webhook's work (see serve_reference)."""


def serve_reference(kind: str, port: int, work: Path) -> None:
    """A reference server, run the way the gateway runs (own process, uvloop, no access log).

    - `bare` reads the body and answers 200: the baseline every ratio is taken against.
    - `verify` also checks the signature (HMAC-SHA256, constant time), parses the JSON, picks
      the message out and answers with a JSON ack: what a webhook costs before any storage.
    - `commit` also writes the message as one deduplicated row through the gateway's own
      group-commit writer (WAL, synchronous=full) and answers after the commit holding it:
      the floor of a durable webhook on SQLite, with none of the inbox's work (no conversation,
      routing, events or deadlines).
    - `rows` writes instead, in the gateway's own schema and through the same writer, every row
      the gateway writes for a message from a new contact: the dedup and open-conversation
      lookup, the conversation, the message, its window deadline and its two events, with JSON
      documents of the same fields, made by orjson from plain dicts. It has none of the inbox's
      logic (no lifecycle, routing, models, event hub, metrics or logs): the floor of what
      storing the inbox's state costs, so the gateway's ratio can be read against it.
    - `lean` does the whole webhook the smallest way we know, as a measure of what a rewrite
      of the hot path and of the schema could reach (see `lean_rows`): every message of the
      payload deduplicated, routed by first-match rules, stored with its conversation, window
      deadline and two events in a lean schema (integer keys, three indexes, compact JSON),
      acknowledged after the group commit. No models, no lifecycle, hub, metrics or logs.
    """
    import hmac
    import sqlite3

    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()  # `gateway serve` uses uvloop too: compare like with like

    secret = APP_SECRET.encode()
    writer = None
    if kind in ("commit", "rows", "lean"):
        from gateway.store.sqlite import SCHEMA
        from gateway.store.sqlite_writer import GroupCommitWriter

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                work / f"reference-{kind}.db", isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if kind == "rows":
                conn.executescript(SCHEMA)
            elif kind == "lean":
                conn.executescript(LEAN_SCHEMA)
            else:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS messages"
                    " (id INTEGER PRIMARY KEY, wamid TEXT UNIQUE, body BLOB)"
                )
            return conn

        writer = GroupCommitWriter(connect)
        writer.start()

    async def ok(request: web.Request) -> web.Response:
        body = await request.read()
        if kind == "bare":
            return web.Response(status=200)
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            return web.Response(status=403)
        document = orjson.loads(body)
        wamid = document["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        if writer is not None and kind == "lean":
            jobs = [
                lean_rows(change["value"])
                for entry in document["entry"]
                for change in entry["changes"]
                if change.get("field") == "messages"
            ]
            await writer.run(lambda conn: [job(conn) for job in jobs])
        elif writer is not None and kind == "rows":
            await writer.run(inbox_rows(document["entry"][0]["changes"][0]["value"]))
        elif writer is not None:
            await writer.run(
                lambda conn: conn.execute(
                    "INSERT INTO messages (wamid, body) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (wamid, body),
                )
            )
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def inbox_rows(value: dict[str, Any]) -> Callable[[sqlite3.Connection], None]:
    """The `rows` reference's write job for one Cloud API message (see serve_reference)."""
    import datetime

    from gateway.ids import new_id  # time-ordered, as the gateway's: keys append to the indexes

    contact, raw = value["contacts"][0], value["messages"][0]
    now = datetime.datetime.now(datetime.UTC)
    stamp, micros = now.isoformat(), int(now.timestamp() * 1_000_000)
    sent = datetime.datetime.fromtimestamp(int(raw["timestamp"]), datetime.UTC)
    window = sent + datetime.timedelta(hours=24)
    address, channel = "+" + raw["from"], CHANNEL
    message_id, conversation_id = new_id("m"), new_id("c")
    who = {"address": address, "display_name": contact["profile"]["name"]}
    text = raw["text"]["body"]
    conversation = {
        "id": conversation_id, "channel": channel, "channel_type": "whatsapp",
        "provider": "cloud_api", "contact": who, "state": "waiting", "queue": "support",
        "created_at": stamp, "updated_at": stamp, "queued_at": stamp, "version": 1,
        "agent": None, "last_message_at": stamp, "last_customer_message_at": sent.isoformat(),
        "window_expires_at": window.isoformat(), "no_agent_at": None, "requeue_at": None,
        "inactive_reason": None, "preview": text[:120], "subject": None, "closed_at": None,
        "previous_conversation_id": None,
    }  # fmt: skip
    message = {
        "id": message_id, "conversation_id": conversation_id, "channel": channel,
        "channel_type": "whatsapp", "provider": "cloud_api", "direction": "in", "kind": "text",
        "text": text, "sent_at": sent.isoformat(), "received_at": stamp,
        "provider_message_id": raw["id"], "status": None, "status_at": None,
        "error_code": None, "error_message": None, "attachments": [], "reply_to": None,
        "updates": None, "subject": None, "contact": who, "agent": None, "client_id": None,
        "template": None, "raw": raw,
        "extra": {"phone_number_id": value["metadata"]["phone_number_id"]},
    }  # fmt: skip
    conversation_json, message_json = orjson.dumps(conversation), orjson.dumps(message)
    created = orjson.dumps(
        {"type": "conversation.created", "at": stamp, "conversation": conversation}
    )
    received = orjson.dumps(
        {"type": "message.received", "at": stamp, "conversation": conversation, "message": message}
    )

    def job(conn: sqlite3.Connection) -> None:
        duplicate, open_data = conn.execute(
            "SELECT (SELECT data FROM messages WHERE channel = ?1 AND provider_message_id = ?2),"
            " (SELECT data FROM conversations WHERE channel = ?1 AND address = ?3"
            " AND state IN ('waiting', 'active', 'pending'))",
            (channel, raw["id"], address),
        ).fetchone()
        if duplicate is not None:
            return
        if open_data is not None:  # a follow-up (--contacts): update, no new conversation
            current = orjson.loads(open_data)
            current.update(updated_at=stamp, last_message_at=stamp, preview=text[:120])
            current["version"] += 1
            data = orjson.dumps(current)
            conn.execute(
                "UPDATE conversations SET version = ?, updated_at = ?, data = ? WHERE id = ?",
                (current["version"], micros, data, current["id"]),
            )
            follow_up = dict(message, conversation_id=current["id"])
            conn.execute(
                "INSERT INTO messages (id, conversation_id, channel, address,"
                " provider_message_id, data) VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, current["id"], channel, address, raw["id"], orjson.dumps(follow_up)),
            )
            event = {"type": "message.received", "at": stamp, "conversation": current,
                     "message": follow_up}  # fmt: skip
            conn.execute("INSERT INTO events (data) VALUES (?)", (orjson.dumps(event),))
            return
        conn.execute(
            "INSERT INTO conversations (channel, address, state, queue, agent, version,"
            " queued_at, updated_at, data, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (channel, address, "waiting", "support", None, 1, micros, micros,
             conversation_json, conversation_id),
        )  # fmt: skip
        conn.execute(
            "INSERT OR REPLACE INTO deadlines (target, kind, due_at, lease_until)"
            " VALUES (?, ?, ?, 0)",
            (f"conversation:{conversation_id}", "window", int(window.timestamp() * 1_000_000)),
        )
        conn.execute(
            "INSERT INTO messages (id, conversation_id, channel, address, provider_message_id,"
            " data) VALUES (?, ?, ?, ?, ?, ?)",
            (message_id, conversation_id, channel, address, raw["id"], message_json),
        )
        conn.execute("INSERT INTO events (data) VALUES (?), (?)", (created, received))

    return job


LEAN_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (id INTEGER PRIMARY KEY, channel TEXT NOT NULL,
    address TEXT NOT NULL, state TEXT NOT NULL, queue TEXT NOT NULL, queued_at INTEGER NOT NULL,
    version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_open ON conversations(channel, address)
    WHERE state IN ('waiting', 'active', 'pending');
CREATE INDEX IF NOT EXISTS conversations_queued ON conversations(state, queue, queued_at);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,
    channel TEXT NOT NULL, provider_message_id TEXT NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages(channel, provider_message_id);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deadlines (conversation_id INTEGER NOT NULL, kind INTEGER NOT NULL,
    due_at INTEGER NOT NULL, PRIMARY KEY (conversation_id, kind)) WITHOUT ROWID;
"""
"""The `lean` reference's schema: integer keys (the table's own rowid), one index per question
the hot path asks (the open conversation, the dedup, the FIFO), no JSON copies of the same
snapshot. A message's conversation is found by scanning messages' rowids in a real one; here the
bench never asks."""

LEAN_ROUTES = ((CHANNEL, re.compile("(?i)precio|price"), "sales"), (None, None, "support"))
"""First match wins, the last without a condition is the default: as `routing:` in config."""


def lean_rows(value: dict[str, Any]) -> Callable[[sqlite3.Connection], None]:
    """The `lean` reference's write job for one change's messages (see serve_reference)."""
    now = time.time()
    stamp = int(now * 1_000_000)
    contacts = {c["wa_id"]: c.get("profile", {}).get("name") for c in value.get("contacts", ())}
    prepared = []
    for raw in value.get("messages", ()):
        text = raw["text"]["body"] if raw.get("type") == "text" else ""
        queue = next(
            q for channel, pattern, q in LEAN_ROUTES
            if (channel is None or channel == CHANNEL)
            and (pattern is None or pattern.search(text))
        )  # fmt: skip
        address, sent = "+" + raw["from"], int(raw["timestamp"])
        contact = {"address": address, "display_name": contacts.get(raw["from"])}
        message = orjson.dumps(
            {"direction": "in", "kind": raw.get("type"), "text": text, "sent_at": sent,
             "received_at": stamp, "contact": contact, "raw": raw}
        )  # fmt: skip
        prepared.append((raw["id"], address, sent, queue, contact, text, message))

    def job(conn: sqlite3.Connection) -> None:
        for wamid, address, sent, queue, contact, text, message in prepared:
            duplicate, open_id, version = conn.execute(
                "SELECT (SELECT 1 FROM messages WHERE channel = ?1 AND provider_message_id = ?2),"
                " c.id, c.version FROM (SELECT 1) LEFT JOIN conversations c ON c.channel = ?1"
                " AND c.address = ?3 AND c.state IN ('waiting', 'active', 'pending')",
                (CHANNEL, wamid, address),
            ).fetchone()
            if duplicate:
                continue
            if open_id is None:
                snapshot = orjson.dumps(
                    {"state": "waiting", "queue": queue, "contact": contact, "preview": text[:120],
                     "queued_at": stamp, "window_expires_at": sent + 86400, "version": 1}
                )  # fmt: skip
                open_id = conn.execute(
                    "INSERT INTO conversations (channel, address, state, queue, queued_at,"
                    " version, data) VALUES (?, ?, 'waiting', ?, ?, 1, ?)",
                    (CHANNEL, address, queue, stamp, snapshot),
                ).lastrowid
                event = b'{"type":"conversation.created","conversation":%s}' % snapshot
            else:
                conn.execute(
                    "UPDATE conversations SET version = version + 1 WHERE id = ?", (open_id,)
                )
                event = b'{"type":"conversation.updated","id":%d,"version":%d}' % (
                    open_id,
                    version + 1,
                )
            message_id = conn.execute(
                "INSERT INTO messages (conversation_id, channel, provider_message_id, data)"
                " VALUES (?, ?, ?, ?)",
                (open_id, CHANNEL, wamid, message),
            ).lastrowid
            conn.execute(
                "INSERT OR REPLACE INTO deadlines VALUES (?, 1, ?)", (open_id, sent + 86400)
            )
            received = b'{"type":"message.received","conversation_id":%d,"message_id":%d}' % (
                open_id,
                message_id,
            )
            conn.execute("INSERT INTO events (data) VALUES (?), (?)", (event, received))

    return job


async def wait_ready(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    """Poll `url` until it answers (the server is listening), or fail if the process died."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit(f"{what} exited with {process.returncode}; see its log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not start listening on {url}")


def drain(pipe: IO[bytes], log: Path) -> None:
    """Copy a server's output to its log file, as a log collector reading a pipe would."""
    with log.open("wb") as out:
        # Popen pipes are BufferedReaders: read1 returns what is there, without waiting to
        # fill the whole buffer.
        reader = cast(io.BufferedReader, pipe)
        for chunk in iter(lambda: reader.read1(65536), b""):
            out.write(chunk)


@contextlib.contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server with its output on a pipe (like journald or a container runtime), not on
    a file of the disk the SQLite store fsyncs to, which would stall every log write."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd
    )
    assert process.stdout is not None
    reader = threading.Thread(target=drain, args=(process.stdout, log), daemon=True)
    reader.start()
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # graceful: finish requests, flush the store
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)


def stored_messages(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count: int = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return count
    finally:
        conn.close()


# --- the run -----------------------------------------------------------------------------------


def table(rounds: list[dict[str, Result]]) -> str:
    """One row per server and round; ratios are to that round's bare handler."""
    lines = [
        f"{'round':<6}{'server':<10}{'ok':>7}{'errors':>7}{'seconds':>8}{'req/s':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'cpu ms/req':>11}{'ratio':>7}"
    ]
    for n, results in enumerate(rounds, start=1):
        bare = results["bare"]
        for result in results.values():
            ratio = f"{result.rate / bare.rate:.2f}" if result is not bare and bare.rate else ""
            lines.append(
                f"{n:<6}{result.name:<10}{result.ok:>7}{result.errors:>7}{result.seconds:>8.2f}"
                f"{result.rate:>8.0f}{result.percentile(0.5):>8.1f}"
                f"{result.percentile(0.99):>8.1f}{result.cpu_ms_per_request:>11.3f}{ratio:>7}"
            )
    return "\n".join(lines)


def ratio(results: dict[str, Result], name: str) -> float:
    bare = results["bare"].rate
    return results[name].rate / bare if bare else 0.0


async def bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    db = work / "gateway.db"
    gateway_port = free_port()
    config = work / "config.yaml"
    config.write_text(
        CONFIG.format(
            port=gateway_port,
            db=db,
            synchronous=args.synchronous,
            channel=CHANNEL,
            phone=PHONE_NUMBER_ID,
            token=hashlib.sha256(b"bench-agent").hexdigest(),
        )
    )
    env = {
        **os.environ,
        "WA_TOKEN": "bench-access-token",
        "WA_APP_SECRET": APP_SECRET,
        "WA_VERIFY": "bench-verify",
        "PYTHONPATH": str(args.source),
    }
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = cpus[-1] if len(cpus) > 1 and not args.no_pin else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus) - {server_cpu})
    gateway_cmd = [
        *pin(server_cpu),
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--log-level",
        args.log_level,
    ]
    references = ["bare"] if args.no_references else list(REFERENCES)
    ports = {kind: free_port() for kind in references}
    gateway_url = f"http://127.0.0.1:{gateway_port}/webhooks/{CHANNEL}"
    urls = {kind: f"http://127.0.0.1:{port}/webhooks/{CHANNEL}" for kind, port in ports.items()}
    print(
        f"webhook bench: {args.rounds} round(s) of up to {args.requests} requests "
        f"({args.seconds:.0f} s cap), {args.concurrency} connections, warm-up {args.warmup}, "
        f"store synchronous={args.synchronous}, log level {args.log_level}, "
        f"{f'{args.contacts} contacts' if args.contacts else 'a new contact per message'}, "
        f"server CPU {server_cpu if server_cpu is not None else 'shared'}, load generator "
        + (f"wrk ({args.wrk_seconds} s per run)" if args.load == "wrk" else "Python"),
        flush=True,
    )
    results: list[dict[str, Result]] = []
    acknowledged = 0
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(running(gateway_cmd, work / "gateway.log", env, args.source))
        servers: dict[str, subprocess.Popen[bytes]] = {}
        for kind, port in ports.items():
            command = [*pin(server_cpu), sys.executable, __file__, "--serve", kind, str(port)]
            servers[kind] = stack.enter_context(
                running([*command, str(work)], work / f"{kind}.log", env)
            )
        await wait_ready(f"http://127.0.0.1:{gateway_port}/healthz", gateway, "gateway")
        for kind, server in servers.items():
            await wait_ready(f"http://127.0.0.1:{ports[kind]}/", server, f"{kind} server")
        for n in range(args.rounds):
            warm = requests_for(2 * n, args.warmup, args.contacts)
            for kind in servers:
                await load(kind, urls[kind], warm, args.concurrency, args.seconds)
            warmed = await load("gateway", gateway_url, warm, args.concurrency, args.seconds)
            acknowledged += warmed.ok
            batch = requests_for(2 * n + 1, measured_requests(args), args.contacts)
            measured = {
                kind: await measure(args, kind, urls[kind], batch, work, server.pid)
                for kind, server in servers.items()
            }
            profiler = profile(args, gateway.pid, n)
            gateway_result = await measure(args, "gateway", gateway_url, batch, work, gateway.pid)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
            acknowledged += gateway_result.ok
            results.append({**measured, "gateway": gateway_result})
        names = thread_names(gateway.pid)
    stored = stored_messages(db)
    print(table(results))
    by_ratio = sorted(results, key=lambda round_: ratio(round_, "gateway"))
    middle = by_ratio[len(by_ratio) // 2]
    median = ratio(middle, "gateway")
    bare, gateway_median = middle["bare"], middle["gateway"]
    print(
        f"median: gateway {gateway_median.rate:.0f} req/s, bare {bare.rate:.0f} req/s, "
        f"ratio {median:.2f} (target >= 0.40)"
    )
    for kind in references[1:]:
        print(
            f"reference {kind}: median ratio "
            f"{statistics.median(ratio(round_, kind) for round_ in results):.2f}"
        )
    cpu_ratio = bare.cpu_ms_per_request / gateway_median.cpu_ms_per_request
    print(
        f"server CPU per request (median round): gateway {gateway_median.cpu_ms_per_request:.3f}"
        f" ms, bare {bare.cpu_ms_per_request:.3f} ms: bare/gateway {cpu_ratio:.2f}"
    )
    if gateway_median.threads and gateway_median.ok:
        per_thread = ", ".join(
            f"{names.get(thread, thread)} {1000 * seconds / gateway_median.ok:.3f}"
            for thread, seconds in sorted(gateway_median.threads.items(), key=lambda item: -item[1])
            if seconds > 0
        )
        print(f"gateway CPU ms/request by thread (median round): {per_thread}")
    # wrk stops on a clock: requests still in flight then may be stored without being counted
    # as acknowledged (at most one per connection per run). Python runs end when all answered.
    in_flight = args.concurrency * len(results) if args.load == "wrk" else 0
    print(f"acknowledged {acknowledged}, stored {stored} (after the gateway stopped)")
    print(f"logs and database: {work}")
    if not acknowledged <= stored <= acknowledged + in_flight:
        print("FAIL: an acknowledged webhook is missing from the store", file=sys.stderr)
        return 1
    if any(round_["gateway"].wrapped for round_ in results):
        print("FAIL: wrk ran out of distinct webhooks: raise --requests", file=sys.stderr)
        return 1
    if any(round_["gateway"].errors for round_ in results):
        print("FAIL: the gateway refused or failed requests", file=sys.stderr)
        return 1
    return 0 if median >= 0.4 else 2


def measured_requests(args: argparse.Namespace) -> int:
    """Distinct webhooks per measured run: wrk runs on a clock, so enough for 5,000 req/s."""
    if args.load == "wrk":
        return max(int(args.requests), 5000 * int(args.wrk_seconds))
    return int(args.requests)


async def measure(
    args: argparse.Namespace, name: str, url: str, batch: list[Request], work: Path, pid: int
) -> Result:
    """One measured run with the chosen load generator (both servers get the same one)."""
    if args.load == "wrk":
        return await load_wrk(name, url, batch, args.concurrency, args.wrk_seconds, work, pid)
    return await load(name, url, batch, args.concurrency, args.seconds, pid)


def profile(args: argparse.Namespace, pid: int, round_index: int) -> subprocess.Popen[bytes] | None:
    """Sample the gateway with py-spy during the first measured round, if asked."""
    if not args.profile or round_index != 0:
        return None
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed; no profile", file=sys.stderr)
        return None
    # Per thread, active samples only (py-spy leaves idle waits out).
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--threads",
        "--rate",
        "400",
        "--format",
        "raw",
        "-o",
        args.profile,
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per measured run")
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per run")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent connections")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--contacts",
        type=int,
        default=0,
        help="spread messages over this many contacts (follow-ups on open conversations);"
        " 0, the default: every message from a new contact, opening a conversation",
    )
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--profile", help="write py-spy raw stacks of the gateway here")
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="run the gateway of this checkout (e.g. a git worktree, to compare versions)",
    )
    add_load_argument(parser)
    parser.add_argument(
        "--wrk-seconds", type=int, default=3, help="length of each measured wrk run"
    )
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="measure only bare and gateway, not the verify, commit and rows references",
    )
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)  # KIND PORT WORKDIR
    args = parser.parse_args()
    if args.serve:
        kind, port, work = args.serve
        serve_reference(kind, int(port), Path(work))
        return 0
    resolve_load(args)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
