"""The `email` channel's config section: one mailbox read over IMAP, replies sent over SMTP.

Example (config.yaml)::

    - name: support-mail
      type: email
      address: support@example.com
      imap: {host: imap.example.com, port: 993, username: support@example.com,
             password: ${IMAP_PASSWORD}}
      smtp: {host: smtp.example.com, port: 587, tls: starttls, username: support@example.com,
             password: ${SMTP_PASSWORD}}
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from gateway.channels import ChannelConfig
from gateway.durations import PositiveDuration
from gateway.lifecycle import ChannelPolicy
from plugins.email.mailboxes import folder

TlsMode = Literal["implicit", "starttls", "none"]
"""`implicit`: TLS from the first byte (IMAPS 993, SMTPS 465); `starttls`: upgrade a plain
connection (IMAP 143, submission 587) and refuse to continue if the server cannot; `none`:
plain text, for loopback test servers only."""


def check_address(value: str) -> str:
    """Validate one bare addr-spec (`local@domain`) with the stdlib parser; return it stripped."""
    text = value.strip()
    try:
        parsed = Address(addr_spec=text)
    except Exception as exc:  # the stdlib parser raises HeaderParseError, ValueError, ...
        raise ValueError(f"not an email address: {value!r}") from exc
    if (
        text.count("@") != 1
        or not parsed.username
        or "." not in parsed.domain
        or parsed.addr_spec != text
    ):
        raise ValueError(f"not an email address: {value!r}")
    return text


EmailAddress = Annotated[str, AfterValidator(check_address)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImapSettings(_Section):
    """Where inbound mail is read; the mailbox is only ever read (BODY.PEEK, no flags set)."""

    host: str
    port: int = Field(default=993, ge=1, le=65535)
    tls: TlsMode = "implicit"
    username: str
    password: SecretStr
    mailbox: str = "INBOX"
    idle: bool = True
    """Use IMAP IDLE when the server offers it; `false` polls every `poll_interval` instead."""
    poll_interval: PositiveDuration = timedelta(seconds=60)
    # Servers drop an IDLE after 30 minutes (RFC 2177 says re-issue before 29), and a session
    # that stopped answering (a frozen server process, a half-open connection) is only noticed
    # when the IDLE ends and its DONE gets no answer within `timeout`: 5 minutes bounds how
    # late mail can be after such a failure, for one extra command per 5 minutes.
    idle_timeout: PositiveDuration = timedelta(minutes=5)
    timeout: PositiveDuration = timedelta(seconds=30)
    first_sync: Literal["new", "all"] = "new"
    """With no cursor yet: `new` starts after the newest message present (older mail is
    imported on purpose with `gateway email backfill`); `all` imports the whole mailbox."""


class SmtpSettings(_Section):
    """Where replies are submitted."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: TlsMode = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    timeout: PositiveDuration = timedelta(seconds=30)


class EmailConfig(ChannelConfig):
    """One email channel instance."""

    type: Literal["email"]
    address: EmailAddress
    from_name: str | None = None
    imap: ImapSettings
    smtp: SmtpSettings
    max_attachment_bytes: int = Field(default=25 * 1024 * 1024, ge=0)
    attachment_hosts: list[str] = Field(default_factory=list)
    """Hosts an agent's outbound attachment may be fetched from even at a private address
    (your own file server: `files.internal`, or `.internal` for its subdomains). Any other
    host must resolve to public addresses only (see plugins.email.fetch)."""

    def unique_values(self) -> dict[str, str]:
        """One mailbox, one channel: two channels reading the same one (host, user, mailbox)
        would each import every mail, so each customer's mail would open two conversations
        and be answered from both. Host names and INBOX are case-insensitive, so compared in
        lower and upper case, a mailbox by the folder it names (`Atención` and `Atenci&APM-n`
        are one), a host without its root dot; the port is not compared (993 and 143 reach
        the same mailbox)."""
        mailbox = folder(self.imap.mailbox)
        host = self.imap.host.strip().lower().rstrip(".")
        return {"imap": f"imap://{self.imap.username}@{host}/{mailbox}"}

    def policy(self) -> ChannelPolicy:
        """The session rules, with `reply_window` measured from when a mail reached us.

        A mail's Date is the sender's word (their PC's clock), not a provider's timestamp:
        a customer whose clock is two days behind would open the conversation with its window
        already lapsed, and email has no templates to answer it with. The message keeps its
        Date as `sent_at` for display.
        """
        return replace(super().policy(), window_from_arrival=True)

    def contact_address(self, written: str) -> str:
        """`Ana <Ana@Example.com>` or `Ana@Example.com` as stored: the bare address, lower
        case (as `plugins.email.headers.sender` reads a From)."""
        address = parseaddr(written)[1]
        return (address if "@" in address else written).strip().lower()

    @property
    def domain(self) -> str:
        """Return the domain our Message-IDs are minted in (that of `address`)."""
        return self.address.rpartition("@")[2].lower()

    @property
    def cursor_key(self) -> str:
        return f"email:{self.name}:cursor"
