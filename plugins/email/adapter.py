"""The running `email` channel: an IMAP reader loop and an SMTP sender.

Reading: one long-lived IMAP connection per channel. Each *pass* searches for UIDs above the
persisted cursor, fetches them in UID order, hands each to the gateway and advances the cursor
after each message is stored. Between passes it IDLEs (re-issued every `idle_timeout`, under
the servers' 30-minute limit) or, without IDLE, waits `poll_interval`. Any failure drops the
connection and reconnects with capped exponential backoff; `health()` is degraded meanwhile.

Tests and operators observe progress without sleeping: `synced` (an asyncio.Condition) is
notified after every completed pass and every connection change; `passes` counts passes;
`trigger()` starts a pass now.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

import aiohttp
from tenacity import RetryCallState

from gateway.channels import (
    BaseAdapter,
    ChannelContext,
    ChannelHealth,
    MediaContent,
    SendResult,
)
from gateway.errors import ChannelError, PermanentChannelError, TransientChannelError
from gateway.model import Attachment, Conversation, Message
from gateway.sink import shown_filename
from plugins.email.attachments import attachment_content
from plugins.email.backoff import Backoff, Sleep, reconnecting
from plugins.email.compose import (
    OutboundFile,
    Thread,
    compose_reply,
    continue_thread,
    mailbox,
    new_message_id,
    thread_from_extra,
)
from plugins.email.config import EmailConfig
from plugins.email.cursor import Cursor, live_key, load_cursor, save_cursor
from plugins.email.deliver import Delivered, deliver_batch
from plugins.email.fetch import AttachmentFetcher
from plugins.email.imap import ImapSession
from plugins.email.smtp import submit
from plugins.email.threads import recall

FETCH_BATCH = 10
STOP_GRACE = 10.0


RELAY_REFUSALS = frozenset({"530", "534", "535", "538"})
"""Permanent SMTP replies that are about us, not the message: authentication required,
mechanism too weak, credentials refused, encryption required."""


class EmailAdapter(BaseAdapter):
    """One configured mailbox (see the module docstring)."""

    channel_type = "email"
    provider = "imap"
    supports_templates = False

    def __init__(
        self,
        context: ChannelContext,
        *,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        imap_tls_context: ssl.SSLContext | None = None,
        smtp_tls_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(context)
        if not isinstance(context.config, EmailConfig):
            raise TypeError("EmailAdapter needs an EmailConfig")
        self.config: EmailConfig = context.config
        self.synced = asyncio.Condition()
        self.passes = 0
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._imap_tls = imap_tls_context
        self._smtp_tls = smtp_tls_context
        self._wake = asyncio.Event()
        self._storing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._detail = "not started"
        self._smtp_problem: str | None = None
        """Why the relay would not take the last mail, while that lasts (see `health`)."""
        self._log = context.log.bind(channel=self.name, channel_type="email")
        self._fetcher = AttachmentFetcher(self.config.attachment_hosts, lambda: context.http)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reader loop in the background; returns at once."""
        if self._task is None:
            self._detail = "connecting"
            self._task = asyncio.create_task(self._run(), name=f"email-imap:{self.name}")

    async def stop(self) -> None:
        """Stop the reader loop and close its connection.

        Waits (up to `STOP_GRACE` seconds) for a message being stored to have its cursor
        saved too, so a restart does not fetch it again; then cancels the loop.
        """
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(self._storing.acquire(), STOP_GRACE)
            except TimeoutError:  # a store that does not answer: stop anyway
                self._log.warning("email.imap.stop_while_storing")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._storing.locked():
                self._storing.release()
        await self._fetcher.close()
        self._connected = False
        self._detail = "stopped"

    def trigger(self) -> None:
        """Start a fetch pass now (stops waiting in IDLE or between polls)."""
        self._wake.set()

    async def fetch_message_media(self, message: Message, attachment: Attachment) -> MediaContent:
        """An attachment of an inbound mail, read back from the stored message (a big mail
        is parsed off the event loop)."""
        return await asyncio.to_thread(attachment_content, message, attachment)

    def health(self) -> ChannelHealth:
        """Degraded while IMAP is disconnected, or while the relay refuses to take mail: the
        last send failed for the relay's sake (unreachable, timing out, 4xx, refused login),
        not for one message's (an unknown recipient). The next send that goes clears it."""
        if self._smtp_problem is not None:
            detail = (
                self._smtp_problem if self._connected else f"{self._detail}; {self._smtp_problem}"
            )
            return ChannelHealth(ok=False, detail=detail)
        return ChannelHealth(ok=self._connected, detail=self._detail)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checked after every pass and connection change."""
        async with self.synced:
            await self.synced.wait_for(predicate)

    # -- reading ---------------------------------------------------------------------------

    async def _run(self) -> None:
        retrying = reconnecting(self._backoff, sleep=self._sleep, before_sleep=self._on_retry)
        async for attempt in retrying:
            with attempt:
                await self._session()

    async def _on_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self._log.warning(
            "email.imap.disconnected",
            error=type(error).__name__,
            detail=str(error)[:200],
            retry_in=round(wait, 3),
        )

    async def _session(self) -> None:
        session = ImapSession(self.config.imap, tls_context=self._imap_tls)
        try:
            await session.connect()
            box = await session.select()
            cursor = await self._start_cursor(box.uidvalidity, box.uidnext, session)
            await self._set_state(True, "connected")
            self._log.info("email.imap.connected", idle=session.has_idle and self.config.imap.idle)
            while True:
                self._wake.clear()
                cursor = await self._fetch_pass(session, cursor)
                self._backoff.reset()
                await self._pass_done()
                await self._wait_for_mail(session)
        except Exception as exc:
            await self._set_state(False, f"disconnected: {type(exc).__name__}: {exc}"[:200])
            raise
        finally:
            await session.close()

    async def _start_cursor(
        self, uidvalidity: int, uidnext: int | None, session: ImapSession
    ) -> Cursor:
        """Return where to resume; handle a first start and a UIDVALIDITY change."""
        key = live_key(self.name)
        cursor = await load_cursor(self.context.kv, key)
        if cursor is not None and cursor.uidvalidity == uidvalidity:
            return cursor
        if cursor is not None:
            # The server renumbered the mailbox (a migration, a restore): every UID is new.
            # Read again what arrived from the day the cursor last moved (IMAP's SINCE counts
            # whole days) and let the core's Message-ID dedup drop what was stored already.
            # Reading the whole mailbox filled the queue with years of old mail.
            start, day = await self._renumbered_start(cursor, session)
            skipped: dict[str, str] = {}
            if day is not None:
                # Mail the server dates earlier (moved in from Spam or another folder, which
                # keeps its arrival date) is not read: say so, and how to import it.
                command = f"gateway email backfill --channel {self.name}"
                skipped = {
                    "not_read_before": day.isoformat(),
                    "backfill": command,
                    "hint": (
                        f"mail the server dates before {day.isoformat()} is not read again;"
                        f" import any that is missing with `{command}` (add --since"
                        " YYYY-MM-DD to read from that day only; what is stored is skipped)"
                    ),
                }
            self._log.warning(
                "email.imap.uidvalidity_changed",
                old=cursor.uidvalidity,
                new=uidvalidity,
                since=cursor.synced_on,
                from_uid=start + 1,
                **skipped,
            )
        elif self.config.imap.first_sync == "all":
            start = 0
        elif uidnext is not None:
            start = uidnext - 1
        else:
            existing = await session.search("ALL")
            start = existing[-1] if existing else 0
        today = self.context.clock.now().date().isoformat()
        cursor = Cursor(uidvalidity=uidvalidity, last_uid=start, synced_on=today)
        await save_cursor(self.context.kv, key, cursor)
        return cursor

    async def _renumbered_start(
        self, cursor: Cursor, session: ImapSession
    ) -> tuple[int, date | None]:
        """The UID to read on from in a renumbered mailbox: before the first message of the
        day the old cursor last moved (all of it without that day, or with first_sync: all);
        and the first day read, when older mail is left unread (None when all of it is)."""
        if cursor.synced_on is None or self.config.imap.first_sync == "all":
            return 0, None
        day = date.fromisoformat(cursor.synced_on) - timedelta(days=1)  # time zones
        found = await session.search("SINCE", day.strftime("%d-%b-%Y"))
        if not found:
            return (await session.search("ALL") or [0])[-1], day
        return found[0] - 1, day

    async def _fetch_pass(self, session: ImapSession, cursor: Cursor) -> Cursor:
        """Store every message above the cursor, in UID order, advancing it after each."""
        await session.noop()
        uids = [
            u
            for u in await session.search("UID", f"{cursor.last_uid + 1}:*")
            if u > cursor.last_uid
        ]
        key = live_key(self.name)
        uidvalidity = cursor.uidvalidity
        position = cursor

        async def save(uid: int) -> None:
            nonlocal position
            today = self.context.clock.now().date().isoformat()
            position = Cursor(uidvalidity=uidvalidity, last_uid=uid, synced_on=today)
            await save_cursor(self.context.kv, key, position)

        def stored(uid: int, delivered: Delivered) -> None:
            self._log.info(
                "email.imap.message_stored",
                uid=uid,
                provider_message_id=delivered.parsed.message.provider_message_id,
                kind=delivered.parsed.message.kind,
                duplicate=delivered.duplicate,
            )

        for start in range(0, len(uids), FETCH_BATCH):
            fetched = await session.fetch(uids[start : start + FETCH_BATCH])
            await deliver_batch(
                [(uid, raw) for uid, raw in fetched if uid > position.last_uid],
                config=self.config,
                inbound=self.context.inbound,
                kv=self.context.kv,
                now=self.context.clock.now(),
                save_cursor=save,
                on_stored=stored,
                log=self._log,
                storing=self._storing,
                history=self.context.history,
            )
        return position

    async def _wait_for_mail(self, session: ImapSession) -> None:
        if session.has_idle and self.config.imap.idle:
            await session.idle(self.config.imap.idle_timeout.total_seconds(), self._wake)
            return
        waits = [
            asyncio.ensure_future(self._sleep(self.config.imap.poll_interval.total_seconds())),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(session.lost.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _pass_done(self) -> None:
        async with self.synced:
            self.passes += 1
            self.synced.notify_all()

    async def _set_state(self, connected: bool, detail: str) -> None:
        async with self.synced:
            self._connected = connected
            self._detail = detail
            self.synced.notify_all()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, conversation: Conversation, message: Message) -> SendResult:
        """Send an agent's reply by SMTP, threaded on the customer's last mail.

        In-Reply-To is the conversation's last inbound Message-ID and References lists the
        conversation's ids, ours included, as the core passes them in `extra["thread"]`
        (prefixed with that mail's own References when we stored it); without them, the
        newest mail stored from the customer's address is answered.
        """
        if not message.text and not message.attachments:
            raise PermanentChannelError("email: nothing to send (templates are not supported)")
        domain = conversation.contact.address.lower().rpartition("@")[2]
        if domain == "invalid" or domain.endswith(".invalid"):
            # A mail without a usable sender is kept under a made-up `.invalid` contact.
            raise PermanentChannelError("email: this contact has no address to answer")
        try:
            recipient = mailbox(conversation.contact.address, conversation.contact.display_name)
            sender = mailbox(self.config.address, self.config.from_name)
        except ValueError:
            raise PermanentChannelError("email: invalid recipient address") from None
        remembered = await recall(self.context.kv, self.name, conversation.contact.address)
        given = thread_from_extra(message.extra)
        thread = continue_thread(given, remembered) if given else remembered or Thread()
        explicit = message.extra.get("subject")
        subject = (
            explicit
            if isinstance(explicit, str)
            else conversation.subject or message.subject or thread.subject
        )
        html = message.extra.get("html")
        message_id = new_message_id(self.config.domain, conversation.id, message.id)
        email = compose_reply(
            message_id=message_id,
            sender=sender,
            recipient=recipient,
            text=message.text or "",
            now=self.context.clock.now(),
            subject=subject,
            verbatim_subject=isinstance(explicit, str),
            thread=thread,
            html_body=html if isinstance(html, str) else None,
            files=[await self._download(a) for a in message.attachments],
        )
        try:
            await submit(
                self.config.smtp,
                email,
                sender=self.config.address,
                recipients=[recipient.addr_spec],
                tls_context=self._smtp_tls,
            )
        except ChannelError as exc:
            if isinstance(exc, TransientChannelError) or exc.provider_code in RELAY_REFUSALS:
                self._smtp_problem = f"SMTP: {exc.message}"[:200]
            raise
        self._smtp_problem = None
        self._log.info(
            "email.smtp.sent", conversation_id=conversation.id, provider_message_id=message_id
        )
        return SendResult(provider_message_id=message_id)

    async def _download(self, attachment: Attachment) -> OutboundFile:
        """Fetch an outbound attachment's bytes from its URL, within `max_attachment_bytes`."""
        if not attachment.url:
            raise PermanentChannelError("email: attachment has no url to fetch it from")
        limit = self.config.max_attachment_bytes
        try:
            async with await self._fetcher.open(attachment.url) as response:
                if response.status >= 500 or response.status == 429:
                    raise TransientChannelError(f"email: attachment fetch: HTTP {response.status}")
                if response.status >= 400:
                    raise PermanentChannelError(f"email: attachment fetch: HTTP {response.status}")
                content = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    content += chunk
                    if len(content) > limit:
                        break
                mime = attachment.mime_type or response.content_type or "application/octet-stream"
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientChannelError(f"email: attachment fetch: {type(exc).__name__}") from None
        if len(content) > limit:
            raise PermanentChannelError("email: attachment larger than max_attachment_bytes")
        name = attachment.filename or url_filename(attachment.url)
        return OutboundFile(filename=name or "attachment", mime_type=mime, content=bytes(content))


def url_filename(url: str) -> str | None:
    """The file name a URL's last path segment gives, percent-decoded: `weird%20name.txt`
    reached the customer as written, escapes and all. A decoded `/` or `\\` (`%2F`) is not
    a path (see `shown_filename`)."""
    return shown_filename(unquote(PurePosixPath(urlparse(url).path).name, errors="replace"))


def make_adapter(context: ChannelContext) -> EmailAdapter:
    """Build the adapter for one configured email channel (the ChannelType factory)."""
    return EmailAdapter(context)


__all__ = ["EmailAdapter", "make_adapter"]
