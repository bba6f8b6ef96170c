"""A message acknowledged by the Redis store survives SIGKILL of redis-server.

The Redis counterpart of `test_sqlite_durability.py`: with AOF and `appendfsync always`, Redis
fsyncs before it replies, so whatever a writer saw acknowledged is on disk when redis-server is
killed without any chance to flush; a restart on the same directory must find all of it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from gateway.store.redis import RedisStore
from tests.store.redis_server import RedisServer

WRITER = r"""
import asyncio, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from datetime import UTC, datetime
from gateway.clock import SystemClock
from gateway.ingest import Ingestor
from gateway.lifecycle import ChannelPolicy
from gateway.model import Contact, InboundMessage
from gateway.store.redis import RedisStore

async def main() -> None:
    store = RedisStore.from_url(sys.argv[1])
    await store.open()
    ingest = Ingestor(store, SystemClock(), lambda m: "q", lambda c: ChannelPolicy())
    async def one(i: int) -> None:
        msg = InboundMessage("ch", "test", "test", f"p{i}", Contact(f"+{i % 50}"),
                             datetime.now(UTC), text=f"m{i}")
        result = await ingest.message(msg)
        print(result.message.provider_message_id, flush=True)
    i = 0
    while True:
        # return_exceptions: once Redis is gone the failures are simply not acknowledged
        outcomes = await asyncio.gather(*(one(i + k) for k in range(20)), return_exceptions=True)
        if any(isinstance(o, Exception) for o in outcomes):
            return
        i += 20

asyncio.run(main())
"""


async def test_acknowledged_messages_survive_redis_sigkill(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        acked: list[str] = []
        while len(acked) < 500:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "writer exited early"
            acked.append(line.decode().strip())
        server.kill()  # SIGKILL while the writer is still sending
        # Everything printed was acknowledged, also what is still in the pipe.
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        acked.extend(x for x in rest.decode().split() if x)
        await proc.wait()

        server.start()  # same port, same directory: Redis replays the AOF
        store = RedisStore.from_url(server.url)
        await store.open()
        try:
            missing = [pid for pid in acked if await store.find_message("ch", pid) is None]
            assert missing == []
            assert len(await store.list_contact_messages("ch", "+0")) >= len(acked) // 50
        finally:
            await store.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.stop()
