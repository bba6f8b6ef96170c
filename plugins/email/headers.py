"""Reading header values safely: Message-ID lists, display text, addresses.

Everything read from a customer's mail is untrusted: RFC 2047 can encode CR/LF into a subject,
8-bit bytes arrive undeclared, and some malformed headers make the stdlib's structured parser
raise. These helpers never raise and never return text that could break a header we write.
"""

from __future__ import annotations

import re
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from functools import lru_cache

_MSGID = re.compile(r"<([^<>\s]{1,900})>")
_BARE_ID = re.compile(r"(?<![^<>\s,;\"])[^<>\s,;\"]+@[^<>\s,;\"]+")
_LINE_BREAKS = re.compile(r"[\r\n\t\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")
_SPACES = re.compile(r" {2,}")
_ANGLE_ADDR = re.compile(r"<([^<>\s@\"]+@[A-Za-z0-9.\[\]:-]+)>")
_ADDR_SPEC = re.compile(r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")


class _Registry(HeaderRegistry):
    """The stdlib registry, minus building a new header class on every lookup."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        found = self._classes.get(key)
        if found is None:
            found = self._classes[key] = super().__getitem__(name)
        return found


_REGISTRY = _Registry()


_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
STRUCTURED_MAX = 2048
"""Longest header value given to the stdlib's structured parsers (addresses, Content-Type,
Message-ID, ...). They take time growing with the square of the length on some inputs: 20 KB of
`"` in a From header cost 8.6 s, and the interpreter lock stops every request meanwhile. Real
values are far shorter; a longer one is kept as plain text (its first `STRUCTURED_MAX`
characters), and addresses are then read from the raw header by `_lenient_addresses`."""


HEADER_MAX = 16384
"""Longest header value read at all: even the stdlib's plain-text header parser copies the rest
of the value at every word (600 KB of References took 8 s). A real header is a few hundred
characters; References keeps its last ids (the nearest ancestors), any other header its start."""


def _bounded(name: str, value: str) -> str:
    if len(value) <= HEADER_MAX:
        return value
    return value[-HEADER_MAX:] if name.lower() == "references" else value[:HEADER_MAX]


@lru_cache(maxsize=4096)
def _parsed_header(name: str, value: str) -> BaseHeader:
    value = _bounded(name, value)
    if len(value) > STRUCTURED_MAX and not issubclass(_REGISTRY[name], UnstructuredHeader):
        return _UNSTRUCTURED(name, value[:STRUCTURED_MAX])
    return _REGISTRY(name, value)


class _CachedHeaders:
    """The stdlib's header registry behind a cache keyed on (name, raw value).

    With `policy.default`, every `msg.get(...)` and every `get_content_type()` re-parses the
    header from its raw text with the pure-Python RFC 5322 parser, and reading one mail asks
    for Content-Type dozens of times (the parser itself, `get_body`, walks): that was most of
    the time spent parsing a mail. Parsed headers are immutable and depend only on the name
    and the raw value, so equal inputs can share one result; `lru_cache` is thread-safe
    (parsing runs in worker threads) and bounds the memory.
    """

    def __call__(self, name: str, value: str) -> BaseHeader:
        return _parsed_header(name, value)


READ_POLICY = policy.default.clone(header_factory=_CachedHeaders())
"""`policy.default` with cached header parsing: for reading mail only (see `_CachedHeaders`)."""


def unescape(text: str) -> str:
    """Turn surrogate-escaped undecodable bytes back into text (UTF-8, else U+FFFD).

    The email package keeps undeclared 8-bit header bytes as lone surrogates, which neither
    orjson nor a store can encode; real senders almost always meant UTF-8.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def one_line(text: str | None) -> str | None:
    """Return `text` as a single clean line (no CR/LF/control chars), or None when empty."""
    if text is None:
        return None
    flat = _SPACES.sub(" ", _LINE_BREAKS.sub(" ", unescape(str(text)))).strip()
    return flat or None


def header(msg: Message, name: str) -> str | None:
    """Return a header's decoded value (RFC 2047 applied), or None; never raises."""
    try:
        value = msg.get(name)
        if value is None:
            return None
        return unescape(str(value))
    except Exception:  # the structured parser raises on some malformed headers
        raw = _raw_header(msg, name)
        return unescape(raw) if raw is not None else None


def _raw_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items() if isinstance(msg, EmailMessage) else msg.items():
        if key.lower() == name.lower():
            return _bounded(name, str(value))
    return None


def normalize_msgid(value: str | None) -> str | None:
    """Return a Message-ID as `<id>` (the form we store and compare), or None if unusable."""
    ids = msgid_list(value)
    return ids[0] if ids else None


def msgid_list(value: str | None) -> list[str]:
    """Return the ids in an In-Reply-To/References value, `<...>`-wrapped, in order, unique.

    Tolerates what real mail does: commas between ids, duplicates, ids without `@`
    (`<test-in-reply-to>`), and bare ids without angle brackets.
    """
    if not value:
        return []
    text = unescape(value)
    found = [f"<{m}>" for m in _MSGID.findall(text)]
    if not found:
        found = [f"<{m}>" for m in _BARE_ID.findall(text)]
    seen: dict[str, None] = {}
    for item in found:
        seen.setdefault(item, None)
    return list(seen)


def is_msgid(value: str) -> bool:
    """Tell whether `value` is one well-formed `<id>` safe to write into a header."""
    return _MSGID.fullmatch(value) is not None and value.isprintable() and value.isascii()


def addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    """Return `(display_name, lower-cased address)` pairs of an address header; never raises."""
    try:
        value = msg.get(name)
        if value is None:
            return []
        found = [
            (unescape(a.display_name or ""), unescape(a.addr_spec).lower())
            for a in getattr(value, "addresses", ())
            if a.addr_spec and "@" in a.addr_spec
        ]
        if found:
            return found
    except Exception:  # fall through to the lenient parser below
        pass
    raw = _raw_header(msg, name)
    if raw is None:
        return []
    return _lenient_addresses(unescape(raw))


def _lenient_addresses(raw: str) -> list[tuple[str, str]]:
    """Read a header the structured parser refused (e.g. an encoded CR/LF in the name).

    An explicit `<addr>` wins over anything the phrase may pretend to be; only without one
    do we fall back to `getaddresses`, keeping plausible addr-specs only.
    """
    angle = list(_ANGLE_ADDR.finditer(raw))
    if angle:
        found = []
        start = 0
        for match in angle:
            phrase = raw[start : match.start()].strip().strip(",").strip()
            found.append((_decode_phrase(phrase), match.group(1).lower()))
            start = match.end()
        return found
    try:
        pairs = getaddresses([raw])
    except RecursionError:  # comments nested thousands deep: nothing usable in them
        return []
    return [(_decode_phrase(n), a.lower()) for n, a in pairs if _ADDR_SPEC.fullmatch(a)]


def _decode_phrase(phrase: str) -> str:
    try:
        text = str(make_header(decode_header(phrase)))
    except Exception:  # undecodable encoded-word: keep it as written
        text = phrase
    return one_line(text.strip('"')) or ""


UNKNOWN_SENDER = "unknown@invalid"
"""What `sender` answers for a mail with no usable Reply-To, From, Sender or Return-Path."""


def sender(msg: Message, own_address: str | None = None) -> tuple[str, str | None]:
    """Return the contact's `(address, display name)`: whom a reply to this mail goes to.

    Reply-To comes first (RFC 5322 3.6.2: where the author wants replies). A website's contact
    form sends every visitor's mail from one address of its own with the visitor in Reply-To:
    read From first and all those visitors become one contact, their requests one conversation,
    and every answer goes to the form's no-reply address. Chatwoot decided the same (its PR
    3837). A Reply-To naming the channel's own address is ignored (it would make a customer's
    mail look like our own). Its display name is Reply-To's, else From's when both addresses
    share a domain (the same person or company), else none: the form's name is not the
    visitor's. Without a usable Reply-To: From, then Sender, then Return-Path. A comment-style
    name (`MAILER-DAEMON@AOL.com (Mail Delivery System)`) counts as a display name.
    """
    own = own_address.lower() if own_address else None
    reply_to = _author(msg, ("Reply-To",), skip=own)
    if reply_to is not None:
        address, display = reply_to
        if display is None:
            author = _author(msg, ("From",))
            if author is not None and _domain(author[0]) == _domain(address):
                display = author[1]
        return address, display
    return _author(msg, ("From", "Sender", "Reply-To", "Return-Path")) or (UNKNOWN_SENDER, None)


def _author(
    msg: Message, names: tuple[str, ...], skip: str | None = None
) -> tuple[str, str | None] | None:
    """The first usable address of these headers (not `skip`), with its display name."""
    for name in names:
        found = addresses(msg, name)
        usable = [item for item in found if item[1] != skip]
        if usable:
            display, address = usable[0]
            if not display and usable[0] is found[0]:
                display = _comment_name(_raw_header(msg, name) or "")
            return address, one_line(display)
    return None


def _comment_name(raw: str) -> str:
    """The name `parseaddr` finds in a header (a comment, `addr (Name)`); empty if none."""
    try:
        return unescape(parseaddr(raw)[0])
    except RecursionError:
        return ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2]
