"""Taking a MIME tree apart: the readable body, the HTML, and the attachments.

Pure functions over `email.message.EmailMessage` (parsed with `policy.default`). They never
raise on malformed input: a mislabelled charset falls back to UTF-8, then Windows-1252, then
Latin-1 (which cannot fail), so a message is always stored with the best text we can make.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import errors
from email.message import EmailMessage, Message

import html2text
from mailparser_reply import EmailReplyParser

from plugins.email.headers import header, one_line

# Charset labels that lie in practice, mapped to the superset senders really use (WHATWG).
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "ascii",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
}
_REPLY_LANGUAGES = ["en", "es", "de", "fr", "it", "nl", "da", "sv", "pl", "cs"]
# The reply parser's regexes are not linear on pathological input: bound what it sees.
_REPLY_SCAN_LIMIT = 100_000
_BLANK_RUN = re.compile(r"\n[^\S\n]*(?:\n[^\S\n]*){2,}")
"""Three or more line breaks with only blanks between them. The reply parser's patterns read a
run of blank lines again from each of its lines: 8,000 blank lines cost it 15 s (the time grows
with the square of the run), and the interpreter lock stops every request meanwhile."""


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One attachment as found in the MIME tree; content is only referenced by `path`."""

    path: str
    mime_type: str
    filename: str | None
    size: int
    sha256: str | None
    disposition: str | None
    content_id: str | None
    oversize: bool


@dataclass(slots=True)
class Body:
    """The readable parts of a message."""

    text: str = ""
    html: str | None = None
    attachments: list[PartInfo] = field(default_factory=list)
    unbounded: dict[str, str] = field(default_factory=dict)
    """The text of each multipart without a boundary, by MIME path (see `_unbounded_text`)."""


def decode_bytes(data: bytes, declared: str | None) -> str:
    """Decode text bytes: declared charset, then UTF-8, then UTF-8 with its few bad bytes
    replaced, then Windows-1252, then Latin-1."""
    label = (declared or "us-ascii").strip().strip('"').lower()
    for candidate in (_CHARSET_ALIASES.get(label, label), "utf-8"):
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    mostly_utf8 = _mostly_utf8(data)
    if mostly_utf8 is not None:
        return mostly_utf8
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 text with a stray bad byte or two (a NUL that the IMAP server turned into 0x80,
    a byte cut off by a relay), decoded with those bytes replaced by U+FFFD; None when the
    bytes do not look like UTF-8 at all (no valid multi-byte character, or more bad bytes
    than good ones: Windows-1252 text mislabelled). Reading all of it as Windows-1252 instead
    turned every accent and emoji of the message into mojibake (hostile-content audit)."""
    cut = _cut_short(data)
    if cut is not None:
        return cut
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    good = sum(1 for char in text if char > "\x7f" and char != "\ufffd")
    # More good than bad: one good pair in Windows-1252 text (`Â©`) is a coincidence.
    return text if good > bad else None


def _cut_short(data: bytes) -> str | None:
    """UTF-8 whose only fault is its last character cut short (a relay truncating a body):
    the rest as it is, and U+FFFD for the stump; None otherwise. A stump of one byte is not
    told apart from Windows-1252 (`caf\xe9` is "café"), so it takes two or three."""
    for length in (2, 3):
        if length > len(data):
            return None
        lead, tail = data[-length], data[-length + 1 :]
        if 0xC2 <= lead <= 0xDF:
            needs = 2
        elif 0xE0 <= lead <= 0xEF:
            needs = 3
        elif 0xF0 <= lead <= 0xF4:
            needs = 4
        else:
            continue
        if needs > length and all(0x80 <= b <= 0xBF for b in tail):
            try:
                return data[:-length].decode("utf-8") + "\ufffd"
            except UnicodeDecodeError:
                return None
    return None


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def part_bytes(part: Message) -> bytes:
    """Return a leaf part's decoded content (base64/QP undone); best effort, never raises."""
    try:
        if part.get_content_maintype() == "message":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return bytes(inner[0].as_bytes())
        data = part.get_payload(decode=True)
        if isinstance(data, bytes):
            return data
    except Exception:  # malformed transfer encoding or nested message
        pass
    raw = part.get_payload()
    return str(raw).encode("utf-8", "surrogateescape") if not isinstance(raw, list) else b""


def part_text(part: Message) -> str:
    """Return a text part's content as str, whatever its declared charset claims."""
    try:
        charset = part.get_content_charset()
    except Exception:  # an unparsable Content-Type parameter
        charset = None
    return _clean(decode_bytes(part_bytes(part), charset))


def html_to_text(html: str) -> str:
    """Convert HTML mail to readable plain text (links kept, images and styling dropped)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    try:
        return _clean(str(converter.handle(html))).strip()
    except Exception:  # html2text chokes on some broken markup: keep the source readable
        return html.strip()


_FORWARD_MARK = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*forwarded message[ \t]*-{2,}|begin forwarded message:)[ \t\r]*$",
    re.IGNORECASE | re.MULTILINE,
)
"""Gmail's and Apple Mail's forward marks (Outlook's "Original Message" heads replies too)."""


def latest_reply(text: str) -> str:
    """Return what the sender newly wrote: quoted history and signature removed.

    Falls back to the whole text when nothing is left (a bare forward, a quote-only reply).
    """
    head, hidden = _hide_long_lines(_BLANK_RUN.sub("\n\n", text[:_REPLY_SCAN_LIMIT]))
    try:
        replies = EmailReplyParser(languages=list(_REPLY_LANGUAGES)).read(head).replies
    except Exception:  # the parser is heuristic; never lose a message over it
        replies = []
    if replies:
        body = _strip_trailing_quote(_shown(str(replies[0].body), hidden).strip())
        if _FORWARD_MARK.search(body):
            # A forward is the message: what follows the mark is what the customer sends us,
            # not history to drop (the parser cuts there, leaving "FYI" or the mark alone).
            return text.strip()
        if body:
            return body
    return text.strip()


_LONG_LINE = 120
"""Lines longer than this go past the reply parser as a placeholder. Its patterns try each
position of a line against the rest of it (a line of "On On On ..." of 24 KB took 22 s, the
time growing with the square of the length, under the interpreter lock, so the whole node
stopped); attribution, signature and quote lines are short."""
_PLACEHOLDER = "\u2063longline{}\u2063"
"""What a long line becomes for the parser: short, plain, and not a mark any pattern knows
(U+2063, an invisible separator, does not occur in mail)."""


def _hide_long_lines(text: str) -> tuple[str, dict[str, str]]:
    lines = text.split("\n")
    hidden: dict[str, str] = {}
    for index, line in enumerate(lines):
        if len(line) > _LONG_LINE:
            key = _PLACEHOLDER.format(len(hidden))
            hidden[key] = line
            lines[index] = key
    return "\n".join(lines), hidden


def _shown(text: str, hidden: dict[str, str]) -> str:
    """Put the long lines back where the parser kept their placeholders."""
    if not hidden:
        return text
    return re.sub("\u2063longline\\d+\u2063", lambda m: hidden.get(m.group(0), ""), text)


def _strip_trailing_quote(text: str) -> str:
    """Drop a `>`-quoted block at the end and the attribution line (`... wrote:`) above it.

    The reply parser knows the attribution wording of a few languages only (`El ... escribió:`
    slips through); a bottom quote after the new text is history in any language. Inline
    answers between quoted lines are left alone.
    """
    lines = text.split("\n")
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    if not any(line.lstrip().startswith(">") for line in lines[end:]):
        return text
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    if end > 0 and lines[end - 1].rstrip().endswith(":"):
        end -= 1
    kept = "\n".join(lines[:end]).strip()
    return kept or text


def _find_body(msg: EmailMessage, kind: str) -> Message | None:
    """The message's `kind` body part, if it has one. `get_body` takes any part not marked
    `attachment`, so a file sent inline (Apple Mail's `report.html`, `notes.txt`) would be
    read as the body and missing from the attachments: a part below the root with a file
    name is a file."""
    try:
        part = msg.get_body(preferencelist=(kind,))
    except Exception:  # malformed multipart structure
        return None
    if part is not None and part is not msg and _filename(part) is not None:
        return None
    return part


def _leaves(part: Message, path: str, in_alternative: bool) -> Iterator[tuple[str, Message, bool]]:
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        alternative = part.get_content_subtype() == "alternative"
        for index, sub in enumerate(part.get_payload(), start=1):
            sub_path = f"{path}.{index}" if path else str(index)
            yield from _leaves(sub, sub_path, alternative)
    else:
        yield (path or "1"), part, in_alternative


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # undecodable RFC 2231 parameter
        name = None
    return one_line(name)


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:  # unparsable Content-Disposition
        return None


def extract(msg: EmailMessage, max_attachment_bytes: int) -> Body:
    """Split a message into its text, HTML and attachments.

    The body is the text/plain (else text/html) part `get_body` picks; other inline text
    parts without a file name are appended to it; every other leaf (files, images, nested
    messages, delivery reports) becomes an attachment.
    """
    body = Body()
    plain = _find_body(msg, "plain")
    html = _find_body(msg, "html")
    texts: list[str] = []
    if plain is not None:
        texts.append(part_text(plain))
    if html is not None:
        body.html = part_text(html)
    for path, part, in_alternative in _leaves(msg, "", False):
        if part is plain or part is html:
            continue
        ctype = part.get_content_type()
        filename = _filename(part)
        disposition = _disposition(part)
        if ctype.startswith("text/") and in_alternative and filename is None:
            continue  # another rendering of the body (text/enriched, a second html)
        if ctype == "text/plain" and filename is None and disposition != "attachment":
            texts.append(part_text(part))
            continue
        if filename is None and _no_boundary(part):
            body.unbounded[path] = _unsplit_text(part)
        body.attachments.append(
            _part_info(path, part, ctype, filename, disposition, max_attachment_bytes)
        )
    text = "\n\n".join(t.strip("\n") for t in texts if t.strip())
    if not text and body.html:
        text = html_to_text(body.html)
    if not text:
        text = _unbounded_text(body)
    body.text = text
    return body


_UNSPLIT = (errors.NoBoundaryInMultipartDefect, errors.StartBoundaryNotFoundDefect)
"""What the parser notes on a multipart it could not split: no boundary named, or one named
(empty, say) that never starts a part."""
_HTML_START = re.compile(r"\s*<(!doctype|html|head|body|div|p|table)\b", re.IGNORECASE)


def _no_boundary(part: Message) -> bool:
    """A multipart the parser could not split (its Content-Type names no boundary, or one
    that never appears: a broken mailer, a header cut by a relay): it keeps the whole
    payload as one string."""
    return part.get_content_maintype() == "multipart" and any(
        isinstance(defect, _UNSPLIT) for defect in part.defects
    )


def _unsplit_text(part: Message) -> str:
    """The body of a multipart that could not be split, as text (HTML made readable)."""
    text = part_text(part)
    return html_to_text(text) if _HTML_START.match(text) else text


def _unbounded_text(body: Body) -> str:
    """The text of a mail that has none but a multipart without a boundary: that part's
    payload, which is the body the sender wrote (before, it was shown as an attachment of
    type multipart/mixed and the message had no text). Those parts leave the attachments:
    they are the text now (the raw mail keeps them)."""
    unbounded = [info for info in body.attachments if info.path in body.unbounded]
    texts = [body.unbounded[info.path] for info in unbounded]
    text = "\n\n".join(t.strip("\n") for t in texts if t.strip())
    if text:
        body.attachments = [a for a in body.attachments if a not in unbounded]
    return text


def _part_info(
    path: str,
    part: Message,
    ctype: str,
    filename: str | None,
    disposition: str | None,
    limit: int,
) -> PartInfo:
    data = part_bytes(part)
    oversize = len(data) > limit
    content_id = one_line(header(part, "Content-ID"))
    return PartInfo(
        path=path,
        mime_type=ctype,
        filename=filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        disposition=disposition,
        content_id=content_id,
        oversize=oversize,
    )
