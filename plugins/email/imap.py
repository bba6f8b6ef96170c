"""One IMAP connection: connect (implicit TLS, STARTTLS or plain), log in, select, search,
fetch and IDLE, on top of aioimaplib.

The mailbox is only read: messages are fetched with `BODY.PEEK[]`, so `\\Seen` is never set and
never consulted (a human reading the mailbox in a mail client does not hide mail from us).
Every call races the connection-lost signal, so a dropped connection surfaces at once as
`ImapError` instead of hanging until a command time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib
from aioimaplib.aioimaplib import Command

from plugins.email.config import ImapSettings
from plugins.email.mailboxes import wire_name

T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"UID (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")
_CHANGES = (b"EXISTS", b"RECENT")


class ImapError(Exception):
    """The server refused a command or the connection broke: reconnect and try again.

    Messages never quote our commands (a LOGIN command carries the password).
    """


@dataclass(frozen=True, slots=True)
class Mailbox:
    """What SELECT told us about the mailbox."""

    uidvalidity: int
    uidnext: int | None


class ImapSession:
    """A logged-in connection to one mailbox. Not reusable after `close`."""

    def __init__(self, settings: ImapSettings, *, tls_context: ssl.SSLContext | None = None):
        self.settings = settings
        self.lost = asyncio.Event()
        self._tls_context = tls_context
        self._client: Any = None

    @property
    def has_idle(self) -> bool:
        return self._client is not None and bool(self._client.has_capability("IDLE"))

    async def connect(self) -> None:
        """Open the connection, upgrade it as configured, and log in."""
        settings = self.settings
        timeout = settings.timeout.total_seconds()
        context = self._tls_context or ssl.create_default_context()
        self._client = aioimaplib.IMAP4(
            host=settings.host,
            port=settings.port,
            timeout=timeout,
            conn_lost_cb=self._on_lost,
            ssl_context=context if settings.tls == "implicit" else None,
        )
        await self._guard(self._client.wait_hello_from_server())
        if settings.tls == "starttls":
            await self._starttls(context)
        response = await self._guard(
            self._client.login(settings.username, settings.password.get_secret_value())
        )
        if response.result != "OK":
            raise ImapError(f"login refused: {_text(response)}")
        # Capabilities may change after login (RFC 3501 7.2.1): ask again.
        await self._guard(asyncio.wait_for(self._client.protocol.capability(), timeout))

    async def _starttls(self, context: ssl.SSLContext) -> None:
        """Upgrade the plain connection; refuse to go on in clear text if the server cannot."""
        protocol = self._client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("server does not offer STARTTLS")
        command = Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await self._guard(
            asyncio.wait_for(protocol.execute(command), self.settings.timeout.total_seconds())
        )
        if response.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(response)}")
        loop = asyncio.get_running_loop()
        protocol.transport = await loop.start_tls(
            protocol.transport, protocol, context, server_hostname=self.settings.host
        )
        await self._guard(protocol.capability())

    async def select(self) -> Mailbox:
        """Select the configured mailbox and return its UIDVALIDITY and UIDNEXT."""
        name = _quote(wire_name(self.settings.mailbox))
        response = await self._guard(self._client.select(name))
        if response.result != "OK":
            raise ImapError(f"SELECT refused: {_text(response)}")
        found = [m for line in response.lines if (m := _UIDVALIDITY.search(bytes(line)))]
        if not found:
            raise ImapError("server sent no UIDVALIDITY")
        uidnext = [m for line in response.lines if (m := _UIDNEXT.search(bytes(line)))]
        return Mailbox(
            uidvalidity=int(found[0].group(1)),
            uidnext=int(uidnext[0].group(1)) if uidnext else None,
        )

    async def noop(self) -> None:
        """Let the server report mail that arrived since the last command (RFC 3501 6.1.2).

        Servers only announce new messages at certain commands; a SEARCH alone may not see
        them, so each pass starts with NOOP.
        """
        response = await self._guard(self._client.noop())
        if response.result != "OK":
            raise ImapError(f"NOOP refused: {_text(response)}")

    async def search(self, *criteria: str) -> list[int]:
        """Return the UIDs matching `criteria` (UID SEARCH), ascending."""
        response = await self._guard(self._client.uid_search(*criteria, charset=None))
        if response.result != "OK":
            raise ImapError(f"SEARCH refused: {_text(response)}")
        return parse_search(response.lines)

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        """Fetch whole messages by UID without setting `\\Seen`; return (uid, raw), by UID."""
        if not uids:
            return []
        uid_set = ",".join(str(u) for u in uids)
        response = await self._guard(self._client.uid("fetch", uid_set, "(UID BODY.PEEK[])"))
        if response.result != "OK":
            raise ImapError(f"FETCH refused: {_text(response)}")
        return sorted(parse_fetch(response.lines))

    async def idle(self, reissue_after: float, wake: asyncio.Event) -> str:
        """IDLE until the mailbox changes, `wake` is set or `reissue_after` seconds pass.

        Returns "changed", "woken" or "timeout". Keep-alives (`* OK Still here`) and flag
        changes do not end the wait; new messages (EXISTS/RECENT) do.
        """
        idle_task = await self._guard(self._client.idle_start(timeout=reissue_after))
        outcome = "timeout"
        try:
            while True:
                push = asyncio.ensure_future(self._client.wait_server_push(reissue_after + 60))
                woken = asyncio.ensure_future(wake.wait())
                lost = asyncio.ensure_future(self.lost.wait())
                try:
                    await asyncio.wait({push, woken, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (push, woken, lost):
                        task.cancel()
                if lost.done() and not lost.cancelled():
                    raise ImapError("connection lost")
                if woken.done() and not woken.cancelled():
                    outcome = "woken"
                    break
                lines = push.result()
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(change in bytes(line) for line in lines for change in _CHANGES):
                    outcome = "changed"
                    break
        finally:
            if not self.lost.is_set():
                self._client.idle_done()
                await self._guard(
                    asyncio.wait_for(idle_task, self.settings.timeout.total_seconds())
                )
        return outcome

    async def close(self) -> None:
        """Log out politely if still connected, then drop the connection."""
        client = self._client
        if client is None:
            return
        # LOGOUT only on an idle, logged-in connection: behind a pending command (IDLE, a
        # slow failed LOGIN) it would wait; closing the socket ends the session just as well.
        protocol = client.protocol
        clean = protocol.state in ("AUTH", "SELECTED") and protocol.pending_sync_command is None
        if clean and not self.lost.is_set():
            with contextlib.suppress(Exception):  # closing anyway; the server may be gone
                await asyncio.wait_for(client.logout(), 1)
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()

    def _on_lost(self, _exc: Exception | None) -> None:
        self.lost.set()

    async def _guard(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, but fail fast with ImapError if the connection drops."""
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task.cancelled():
            raise ImapError("connection lost")
        if task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, ImapError):
                raise exc
            raise ImapError(f"{type(exc).__name__}") from None
        return task.result()


def parse_search(lines: list[Any]) -> list[int]:
    """Return the UIDs of a SEARCH response, ascending.

    aioimaplib strips the `* SEARCH` prefix from the untagged line; the last line is the
    tagged completion text, which is not data.
    """
    uids: set[int] = set()
    for line in lines[:-1]:
        tokens = bytes(line).split()
        if tokens and tokens[0].upper() == b"SEARCH":
            tokens = tokens[1:]
        uids.update(int(tok) for tok in tokens if tok.isascii() and tok.isdigit())
    return sorted(uids)


def parse_fetch(lines: list[Any]) -> list[tuple[int, bytes]]:
    """Pull (uid, message bytes) pairs out of aioimaplib's flat FETCH response lines.

    Each message is `[b'<seq> FETCH (UID <uid> BODY[] {n}', <literal>, b')']`; the UID may
    instead come after the literal (`b' UID 7)'`); unsolicited FETCH (flag) updates carry no
    literal and are skipped.
    """
    found: list[tuple[int, bytes]] = []
    index = 0
    while index < len(lines):
        line = bytes(lines[index])
        if _FETCH.match(line) and _LITERAL.search(line) and index + 1 < len(lines):
            literal = bytes(lines[index + 1])
            tail = bytes(lines[index + 2]) if index + 2 < len(lines) else b""
            uid = _UID.search(line) or _UID.search(tail)
            if uid is not None:
                found.append((int(uid.group(1)), literal))
            index += 3
        else:
            index += 1
    return found


def _text(response: Any) -> str:
    lines = [bytes(line).decode("utf-8", "replace") for line in response.lines[-1:]]
    return " ".join(lines)[:200]


def _quote(mailbox: str) -> str:
    escaped = mailbox.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
