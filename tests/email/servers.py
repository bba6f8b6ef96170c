"""Real mail servers for the email tests: Debian's Dovecot (IMAP) and aiosmtpd (SMTP).

Dovecot runs in the foreground (`-F`) from a throwaway config: its own base_dir, log file,
passwd-file user database with one plain-text user, maildir storage, no TLS, IMAP only,
listening on 127.0.0.1 on a free port. Mail is put in by IMAP APPEND, as a delivery would, or
really delivered: `LdaHandler` is a small MTA (aiosmtpd) that hands every message it accepts
to Dovecot's own delivery agent, `dovecot-lda`, before answering 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

DOVECOT = "/usr/sbin/dovecot"
DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
USER = "agent@example.com"
PASSWORD = "s3cret-pass"
_APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificate(cert: Path, key: Path) -> None:
    """Write a fresh self-signed certificate for 127.0.0.1 (valid one day) and its key."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Block until the port accepts connections (the server is ready) or fail loudly."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dovecot exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"dovecot did not listen on {port}")


@dataclass
class Dovecot:
    """One Dovecot instance with one user; `restart()` keeps its port and its mail."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: bool = False
    """With TLS: a fresh self-signed certificate for 127.0.0.1, STARTTLS on `port` and
    implicit TLS on `tls_port`."""
    tls_port: int = field(default_factory=free_port)

    @property
    def cert_path(self) -> Path:
        return self.root / "cert.pem"

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def write_config(self) -> None:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        (root / "passwd").chmod(0o644)
        if self.tls:
            make_certificate(self.cert_path, root / "key.pem")
            ssl_settings = f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{root}/key.pem\n"
            imaps = f"address = 127.0.0.1\n    port = {self.tls_port}"
        else:
            ssl_settings = "ssl = no\n"
            imaps = "port = 0"
        if os.geteuid() == 0:
            # Dovecot refuses uid 0 for mail; its package user owns the mail instead.
            internal, login = "dovecot", "dovenull"
            mail_user = pwd.getpwnam("dovecot")
            os.chown(root / "mail", mail_user.pw_uid, mail_user.pw_gid)
            uid, gid = mail_user.pw_uid, mail_user.pw_gid
            chroot = ""
        else:
            me = pwd.getpwuid(os.geteuid())
            internal = login = me.pw_name
            uid, gid = me.pw_uid, me.pw_gid
            chroot = "  chroot =\n"
        self.config_path.write_text(
            f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
{ssl_settings}disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 0
mail_location = maildir:{root}/mail/%n
imap_idle_notify_interval = 2 mins
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
{chroot}}}
"""
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait_port(self.port, self.proc, self.log_path, time.monotonic() + 20)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server and every process it started (open IMAP sessions are cut).

        SIGKILL by default: a crash, and instant (a graceful SIGTERM lets sessions linger
        for seconds). The whole process group goes, so the port is free for `start` again.
        """
        if self.proc is None:
            return
        pgid = self.proc.pid  # started with start_new_session: it leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        # Killed children linger as zombies until init reaps them; they hold no sockets.
        # What `start` needs is the port free again, which is checked directly.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _port_free(self.port):
                return
            time.sleep(0.01)
        raise RuntimeError(f"port {self.port} still in use after stopping dovecot")

    def restart(self) -> None:
        self.stop()
        self.start()

    def imap_settings(self, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": "none",
            "username": USER,
            "password": PASSWORD,
            "timeout": "10s",
        }
        settings.update(overrides)
        return settings

    def append_sync(self, raw: bytes, mailbox: str = "INBOX", date: str | None = None) -> int:
        """APPEND one message (as a delivery would) and return its UID."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            client.login(USER, PASSWORD)
            when = f'"{date}"' if date else None
            typ, data = client.append(mailbox, None, when, raw)
            assert typ == "OK", data
            match = _APPENDUID.search(data[0] or b"")
            assert match, data
            return int(match.group(2))
        finally:
            client.logout()

    async def append(self, raw: bytes, mailbox: str = "INBOX", date: str | None = None) -> int:
        return await asyncio.to_thread(self.append_sync, raw, mailbox, date)

    def create_sync(self, wire_name: str) -> list[str]:
        """CREATE a mailbox named `wire_name` exactly as sent on the wire (modified UTF-7 for
        non-ASCII names); return the names LIST shows afterwards, as the server sends them."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            client.login(USER, PASSWORD)
            typ, data = client.create(f'"{wire_name}"')
            assert typ == "OK", data
            typ, listed = client.list()
            assert typ == "OK", listed
            return [bytes(line).decode("ascii") for line in listed if isinstance(line, bytes)]
        finally:
            client.logout()

    def append_many_sync(
        self, raws: list[bytes], mailbox: str = "INBOX", date: str | None = None
    ) -> list[int]:
        """APPEND many messages over one connection (filling a mailbox); return their UIDs."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        uids = []
        try:
            client.login(USER, PASSWORD)
            when = f'"{date}"' if date else None
            for raw in raws:
                typ, data = client.append(mailbox, None, when, raw)
                assert typ == "OK", data
                match = _APPENDUID.search(data[0] or b"")
                assert match, data
                uids.append(int(match.group(2)))
            return uids
        finally:
            client.logout()

    def flags_sync(self, uid: int) -> str:
        """Return the FLAGS of a message (to prove we never set \\Seen)."""
        client = imaplib.IMAP4("127.0.0.1", self.port)
        try:
            client.login(USER, PASSWORD)
            client.select("INBOX", readonly=True)
            typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
            assert typ == "OK", data
            return str(data[0])
        finally:
            client.logout()


class LdaHandler:
    """An aiosmtpd handler that delivers every accepted message into Dovecot with
    `dovecot-lda`, the way a local MTA hands mail over, and answers 250 only once Dovecot
    stored it (4xx if it could not). Mail arrives as delivered mail: Dovecot writes it to
    the maildir itself and tells IDLE-ing sessions, as in production."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.delivered = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        command = [DOVECOT_LDA, "-c", str(self.dovecot.config_path), "-d", USER]
        if envelope.mail_from and envelope.mail_from != "<>":
            command += ["-f", envelope.mail_from]
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await proc.communicate(envelope.original_content or envelope.content)
        if proc.returncode != 0:
            detail = " ".join(err.decode("utf-8", "replace").split())[:200]
            return f"451 4.3.0 dovecot-lda exited {proc.returncode}: {detail}"
        self.delivered += 1
        return "250 2.0.0 Delivered to Dovecot"


def make_dovecot_root() -> Path:
    """A private directory for one Dovecot, reachable by its unprivileged mail user.

    pytest's tmp_path lives under a 0700 directory the `dovecot` user cannot traverse when
    the tests run as root, so the server gets its own 0755 directory in /tmp instead.
    """
    root = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    root.chmod(0o755)
    return root


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted message, or answers a chosen error."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.data_reply: str | None = None
        self.rcpt_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    handler: RecordingHandler
    controller: Controller

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def smtp_settings(self, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": "none",
            "timeout": "10s",
        }
        settings.update(overrides)
        return settings


@dataclass
class Mta:
    """A running `LdaHandler`: SMTP in on `port`, Dovecot delivery out."""

    handler: LdaHandler
    controller: Controller

    @property
    def port(self) -> int:
        return int(self.controller.port)
