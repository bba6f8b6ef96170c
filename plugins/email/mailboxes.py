"""Mailbox names as IMAP takes them: modified UTF-7 (RFC 3501 5.1.3), by the maintained
imapclient codec.

Ops write a name as they see it (`Atención`, `A&B Support`) or, as some servers' docs show it,
already encoded (`Atenci&APM-n`); both must reach the same folder, and two channels naming one
folder the two ways must be seen to share it.
"""

from __future__ import annotations

from imapclient import imap_utf7


def wire_name(mailbox: str) -> str:
    """The name to send: as written when it already is valid modified UTF-7 (plain ASCII
    without `&`, or encoded by hand), else encoded (`Atención` is `Atenci&APM-n`, and a bare
    `&`, which servers refuse, is `&-`: `A&B Support` is `A&-B Support`)."""
    if mailbox.isascii():
        try:
            decoded: str = imap_utf7.decode(mailbox.encode("ascii"))
        except UnicodeDecodeError:
            decoded = ""
        if decoded and imap_utf7.encode(decoded) == mailbox.encode("ascii"):
            return mailbox
    encoded: bytes = imap_utf7.encode(mailbox)
    return encoded.decode("ascii")


def folder(mailbox: str) -> str:
    """The folder a name means, however it was written (`Atenci&APM-n` is `Atención`);
    INBOX in any case is INBOX (RFC 3501 5.1)."""
    name: str = imap_utf7.decode(wire_name(mailbox).encode("ascii"))
    return "INBOX" if name.upper() == "INBOX" else name
