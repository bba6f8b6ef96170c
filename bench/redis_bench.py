"""Redis benchmark (issue 6): signed webhooks through one and two gateway processes on one Redis,
plus the accept race and the timer sweep on the Redis store.

1. Webhook throughput. A real redis-server (AOF, `appendfsync always`: every acknowledged
   message is on disk) and real `gateway serve` processes with a WhatsApp Cloud API channel.
   The load generator (this process, aiohttp client, loopback only) posts Meta webhooks, each
   signed with X-Hub-Signature-256 and carrying one text message from one of K contacts, with
   C requests in flight, for at most N requests or T seconds. Every 200 means verified, parsed,
   deduplicated, durably stored, routed and acknowledged. Measured against a bare aiohttp
   handler (own process, reads the body, answers 200) driven by the same load generator in the
   same run, and with two gateway processes (requests alternate between them).
2. Accept race: P waiting conversations, each accepted by R agents at once through
   `Actions.accept` (read, decide, compare-and-set, re-decide on conflict: one winner, the rest
   refused), on the Redis store and, for comparison, on the SQLite store in the same run.
3. Timer sweep: M conversations whose reply window is due, fired by the scheduler (claim,
   lifecycle, compare-and-set, event), on Redis and on SQLite.

Figures are ratios to baselines measured in the same run (absolute numbers on a shared machine
are noise). The gateway logs at `warning`, as in the other benchmarks.

The load generator is wrk when it is installed (`apt-get install wrk`; one per gateway process
when there are two), else the aiohttp client, which caps the bare handler (see bench/README.md).

Run: python bench/redis_bench.py [--requests 20000] [--seconds 8] [--concurrency 64] [--load python]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import structlog
from common import add_load_argument, free_port, resolve_load, signed_meta_text, wait_ready
from webhook_bench import Request, load_wrk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.actions import Actions
from gateway.clock import ManualClock
from gateway.directory import AgentInfo, Directory, QueueInfo
from gateway.errors import TransitionError
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy
from gateway.model import Contact, InboundMessage
from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SqliteStore
from gateway.timers import DeadlineHandler, Scheduler

APP_SECRET = "bench-app-secret"
PHONE_ID = "106540352242922"

BARE_SERVER = """
import itertools, sys
from aiohttp import web
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass

mode = sys.argv[2]
ids = itertools.count()

async def hook(request):
    body = await request.read()
    if mode == "one-call":  # one redis-py call per request (HSET of the body)
        await request.app["redis"].hset("bench:bodies", str(next(ids)), body)
    elif mode == "batched":  # the same HSET through the store's pipelining layer
        await request.app["batcher"].execute("HSET", "bench:bodies", str(next(ids)), body)
    return web.json_response({"status": "ok"})

async def redis_ctx(app):
    if mode != "plain":
        from redis.asyncio import Redis
        from gateway.store.redis_batch import CommandBatcher
        app["redis"] = Redis.from_url(sys.argv[3], protocol=2, max_connections=1000)
        app["batcher"] = CommandBatcher(app["redis"])
    yield
    if mode != "plain":
        await app["batcher"].close()
        await app["redis"].aclose()

app = web.Application()
app.router.add_post("/webhooks/{channel}", hook)
app.cleanup_ctx.append(redis_ctx)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
BARE_MODES = {
    "bare": "plain",
    "bare+redis-py": "one-call",
    "bare+batched": "batched",
}


# --- load generator ----------------------------------------------------------------------------


def webhook(i: int, contacts: int, run: str) -> tuple[bytes, str]:
    """One signed Meta webhook with one text message (unique id) from contact i % K."""
    return signed_meta_text(
        app_secret=APP_SECRET,
        waba_id="WABA1",
        phone_number_id=PHONE_ID,
        phone=f"1555{i % contacts:07d}",
        name=f"C{i % contacts}",
        wamid=f"wamid.{run}.{i}",
        text=f"hola {i}",
        timestamp=int(time.time()),
    )


@dataclass
class LoadResult:
    ok: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def load(
    bases: list[str], requests: list[tuple[bytes, str]], concurrency: int, seconds: float
) -> LoadResult:
    """Post `requests` round robin over `bases`, `concurrency` at a time, for at most `seconds`."""
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        next_index = 0
        ok = failed = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal next_index, ok, failed
            while next_index < len(requests) and time.perf_counter() < stop:
                i = next_index
                next_index += 1
                body, signature = requests[i]
                async with http.post(
                    f"{bases[i % len(bases)]}/webhooks/wa-cloud",
                    data=body,
                    headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        ok += 1
                    else:
                        failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return LoadResult(ok, failed, time.perf_counter() - started)


async def load_with_wrk(
    bases: list[str],
    requests: list[tuple[bytes, str]],
    concurrency: int,
    seconds: float,
    work: Path,
    name: str,
) -> LoadResult:
    """The same with wrk (see webhook_bench.load_wrk): one wrk per base, the connections and
    the requests shared out, all at once. A gateway that would see a wamid twice fails the run:
    a duplicate is cheaper than a message."""
    runs = await asyncio.gather(
        *(
            load_wrk(
                f"{name}-{k}",
                f"{base}/webhooks/wa-cloud",
                [
                    Request(body, {"X-Hub-Signature-256": signature})
                    for body, signature in requests[k :: len(bases)]
                ],
                max(1, concurrency // len(bases)),
                max(1, round(seconds)),
                work,
            )
            for k, base in enumerate(bases)
        )
    )
    if not name.startswith("bare") and any(run.wrapped for run in runs):
        raise SystemExit(f"{name}: wrk ran out of distinct webhooks; raise --requests")
    return LoadResult(
        sum(run.ok for run in runs),
        sum(run.errors for run in runs),
        max(run.seconds for run in runs),
    )


# --- processes ---------------------------------------------------------------------------------


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        sys.exit("redis-server is not installed; install it: apt-get install -y redis-server")
    port = free_port()
    (tmp / "redis").mkdir()
    proc = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, port


def write_config(tmp: Path, redis_url: str) -> Path:
    digest = hashlib.sha256(b"bench").hexdigest()
    path = tmp / "config.yaml"
    path.write_text(
        textwrap.dedent(f"""
        server: {{host: 127.0.0.1, port: 8080, public_url: "http://127.0.0.1:8080"}}
        store: {{url: "{redis_url}"}}
        channels:
          - {{name: wa-cloud, type: whatsapp, provider: cloud_api, phone_number_id: "{PHONE_ID}",
             access_token: "bench-token", app_secret: "{APP_SECRET}", verify_token: "bench",
             api_base_url: "http://127.0.0.1:9"}}
        queues: [{{name: support}}]
        routing: [{{queue: support}}]
        agents: [{{id: bench, token_sha256: "{digest}", queues: [support], max_active: 5}}]
    """)
    )
    return path


def start_gateway(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def webhooks(args: argparse.Namespace, tmp: Path) -> dict[str, LoadResult]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    redis_proc, redis_port = start_redis(tmp)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    bare_ports = {name: free_port() for name in BARE_MODES}
    bares = [
        subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, str(bare_ports[name]), mode, redis_url], env=env
        )
        for name, mode in BARE_MODES.items()
    ]
    config = write_config(tmp, f"redis://127.0.0.1:{redis_port}/0")
    ports = [free_port(), free_port()]
    nodes = [start_gateway(config, port, env) for port in ports]
    results: dict[str, LoadResult] = {}
    try:
        for port in (*bare_ports.values(), *ports):
            await wait_ready(f"http://127.0.0.1:{port}/readyz")
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        targets_by_name = {n: [f"http://127.0.0.1:{p}"] for n, p in bare_ports.items()}
        targets_by_name.update({"one": bases[:1], "two": bases})

        def batch(run: str) -> list[tuple[bytes, str]]:
            return [webhook(i, args.contacts, run) for i in range(args.requests)]

        async def measure(name: str, targets: list[str], run: str) -> LoadResult:
            requests = batch(run)
            if args.load == "wrk":
                work = tmp / "wrk"
                work.mkdir(exist_ok=True)
                return await load_with_wrk(
                    targets, requests, args.concurrency, args.seconds, work, name
                )
            return await load(targets, requests, args.concurrency, args.seconds)

        await load(bases, batch("warm"), args.concurrency, 2)  # connections, caches, contacts
        for name in BARE_MODES:
            await load(targets_by_name[name], batch("warm"), args.concurrency, 1)
        # Alternate so that drift in the machine's load hits every configuration alike.
        for round_ in range(args.rounds):
            for name, targets in targets_by_name.items():
                result = await measure(name, targets, f"{name}{round_}")
                best = results.get(name)
                if best is None or result.rate > best.rate:
                    results[name] = result
    finally:
        stop([*nodes, *bares, redis_proc])
    return results


# --- store-level: accept race and timer sweep --------------------------------------------------


async def with_store(make: Callable[[], Store], run: Callable[[Store], Awaitable[float]]) -> float:
    store = make()
    await store.open()
    try:
        return await run(store)
    finally:
        await store.close()


async def accept_race(store: Store, conversations: int, racers: int) -> float:
    """Conversations decided per second when `racers` agents accept each one at once."""
    clock = ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    agents = {f"a{i}": AgentInfo(f"a{i}", frozenset({"support"}), 10**6) for i in range(racers)}
    directory = Directory(
        queues={"support": QueueInfo("support")}, agents=agents, channels={"wa": ChannelPolicy()}
    )
    ingest = Ingestor(store, clock, lambda m: "support", lambda c: ChannelPolicy())
    ids = []
    for start in range(0, conversations, 200):
        chunk = await asyncio.gather(
            *(
                ingest.message(
                    InboundMessage(
                        "wa", "whatsapp", "test", f"race{i}", Contact(f"+{i}"), clock.now()
                    )
                )
                for i in range(start, min(conversations, start + 200))
            )
        )
        ids.extend(r.conversation.id for r in chunk)
    actions = Actions(store, clock, directory)
    winners = 0

    async def race(conversation_id: str) -> None:
        nonlocal winners
        outcomes = await asyncio.gather(
            *(actions.accept(conversation_id, agent) for agent in agents.values()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, TransitionError):
                raise outcome
        winners += sum(not isinstance(o, BaseException) for o in outcomes)

    started = time.perf_counter()
    for start in range(0, len(ids), 50):  # 50 races at a time
        await asyncio.gather(*(race(c) for c in ids[start : start + 50]))
    elapsed = time.perf_counter() - started
    assert winners == len(ids), (winners, len(ids))
    return len(ids) / elapsed


async def timer_sweep(store: Store, deadlines: int) -> float:
    """Due reply windows fired per second by one scheduler pass."""
    clock = ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    policy = ChannelPolicy(reply_window=timedelta(hours=24))
    ingest = Ingestor(store, clock, lambda m: "support", lambda c: policy)
    for start in range(0, deadlines, 200):
        await asyncio.gather(
            *(
                ingest.message(
                    InboundMessage("wa", "whatsapp", "test", f"t{i}", Contact(f"+{i}"), clock.now())
                )
                for i in range(start, min(deadlines, start + 200))
            )
        )
    clock.advance(timedelta(hours=25))
    directory = Directory(channels={"wa": policy}, queues={"support": QueueInfo("support")})
    scheduler = Scheduler(store, clock, DeadlineHandler(store, clock, directory))
    started = time.perf_counter()
    fired = await scheduler.run_once()
    elapsed = time.perf_counter() - started
    assert fired == deadlines, (fired, deadlines)
    return fired / elapsed


async def store_benchmarks(args: argparse.Namespace, tmp: Path) -> dict[str, tuple[float, float]]:
    redis_proc, redis_port = start_redis(tmp)
    url = f"redis://127.0.0.1:{redis_port}/0"
    results: dict[str, tuple[float, float]] = {}
    try:
        await wait_for_redis(url)
        counter = iter(range(1000))

        def redis_store() -> Store:
            return RedisStore.from_url(f"{url}?prefix=b{next(counter)}")

        def sqlite_store() -> Store:
            return SqliteStore(tmp / f"bench{next(counter)}.db")

        results["accept race"] = (
            await with_store(redis_store, lambda s: accept_race(s, args.races, args.racers)),
            await with_store(sqlite_store, lambda s: accept_race(s, args.races, args.racers)),
        )
        results["timer sweep"] = (
            await with_store(redis_store, lambda s: timer_sweep(s, args.deadlines)),
            await with_store(sqlite_store, lambda s: timer_sweep(s, args.deadlines)),
        )
    finally:
        stop([redis_proc])
    return results


async def wait_for_redis(url: str) -> None:
    store = RedisStore.from_url(url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            await store.open()
            if await store.ping():
                await store.close()
                return
        except Exception:
            pass
        await store.close()
        await asyncio.sleep(0.05)  # polling a process we started
    raise RuntimeError("redis-server did not come up")


async def main_async(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    with tempfile.TemporaryDirectory() as web_tmp, tempfile.TemporaryDirectory() as store_tmp:
        hooks = await webhooks(args, Path(web_tmp))
        stores = await store_benchmarks(args, Path(store_tmp))
    bare, one, two = hooks["bare"], hooks["one"], hooks["two"]
    print(
        f"signed Meta webhooks, Redis appendfsync always, {args.concurrency} in flight, "
        f"{args.contacts} contacts, best of {args.rounds} x {args.seconds:.0f} s, load generator "
        + ("wrk" if args.load == "wrk" else "Python (flatters the ratios; see bench/README.md)")
    )
    print(f"  {'':32} {'req/s':>9} {'ratio to bare':>14} {'failed':>7}")
    for label, result in (
        ("bare aiohttp handler", bare),
        ("bare + one redis-py HSET", hooks["bare+redis-py"]),
        ("bare + HSET via CommandBatcher", hooks["bare+batched"]),
        ("gateway, one node", one),
        ("gateway, two nodes", two),
    ):
        print(f"  {label:32} {result.rate:9.0f} {result.rate / bare.rate:14.2f} {result.failed:7d}")
    print(f"  two nodes / one node: {two.rate / one.rate:.2f}")
    print(f"store operations ({args.racers} racers per conversation; {args.deadlines} deadlines)")
    print(f"  {'':32} {'redis /s':>9} {'sqlite /s':>10} {'redis/sqlite':>13}")
    for label, (on_redis, on_sqlite) in stores.items():
        print(f"  {label:32} {on_redis:9.0f} {on_sqlite:10.0f} {on_redis / on_sqlite:13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000, help="per measured run, at most")
    parser.add_argument("--seconds", type=float, default=6, help="per measured run, at most")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--races", type=int, default=1000)
    parser.add_argument("--racers", type=int, default=4)
    parser.add_argument("--deadlines", type=int, default=10000)
    add_load_argument(parser)
    args = parser.parse_args()
    resolve_load(args)
    if args.load == "wrk":
        args.requests = max(args.requests, int(6000 * args.seconds))
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
