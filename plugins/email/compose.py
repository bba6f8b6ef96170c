"""Build the outbound reply: threading headers, subject, text + HTML alternative, files.

Pure (the clock and Message-ID are arguments). Every value that came from a customer (their
display name, their subject, ids from their References) passes through here, so this is where
header injection is stopped: display text is flattened to one line, ids that are not one
well-formed `<id>` are dropped, and addresses are parsed by the stdlib, which refuses CR/LF.
The email package's `policy.default` then refuses any header value still carrying a line
break, as a second line of defence.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, make_msgid

from plugins.email.headers import is_msgid, msgid_list, one_line

_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|antw|ref|res|rif|vs|odp|r)\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*)+",
    re.IGNORECASE,
)
# Clients cap References (a long thread would make a huge header): keep the root and the most
# recent ids, which is what threading needs (RFC 5322 3.6.4 allows trimming the middle).
MAX_REFERENCES = 30


class _MsgIdListHeader(UnstructuredHeader, BaseHeader):
    """In-Reply-To and References: a list of `<id>`s, folded only between ids.

    The default policy treats them as unstructured text, and a word longer than a line (our
    own Message-IDs are about 95 characters) is then folded as RFC 2047 encoded words, which
    RFC 5322 forbids in msg-id fields: mail clients drop the mangled id and the thread breaks.
    Every id was checked by `is_msgid` (ASCII, no whitespace), so plain folding is exact.
    """

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or 998
        head = f"{self.name}:"
        lines: list[str] = []
        line = head
        for msgid in str(self).split():
            if line != head and len(line) + 1 + len(msgid) > limit:
                lines.append(line)
                line = ""
            line += f" {msgid}"
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("in-reply-to", _MsgIdListHeader)
_HEADERS.map_to_type("references", _MsgIdListHeader)
_POLICY = email_policy.default.clone(header_factory=_HEADERS)
"""`policy.default` (which refuses line breaks in header values) with exact msg-id folding."""


@dataclass(frozen=True, slots=True)
class Thread:
    """What a reply answers: the parent's Message-ID and the parent's own references."""

    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundFile:
    filename: str
    mime_type: str
    content: bytes


def new_message_id(
    domain: str, conversation_id: str | None = None, message_id: str | None = None
) -> str:
    """The Message-ID of an outgoing mail, in our own domain.

    With the gateway's `message_id` it is that message's, every time: a send tried again after
    a relay took the mail but its answer was lost (a timeout after DATA) is then the same mail
    to the customer's client, which shows it once, and a reply or bounce to either copy finds
    the message. Without, a fresh unique one.
    """
    own = re.sub(r"[^A-Za-z0-9_.-]", "", message_id or "")
    if own:  # short enough never to be folded onto a line of its own
        return f"<{own}@{domain}>"
    idstring = re.sub(r"[^A-Za-z0-9_.-]", "", conversation_id or "") or None
    return make_msgid(idstring=idstring, domain=domain)


def reply_subject(subject: str | None) -> str:
    """Return `Re: <subject>` with any existing `Re:`/`AW:`/`Re[2]:` prefixes collapsed; a
    reply to a mail without a subject is `Re:`, as mail clients do (a reply with no Subject
    at all looks unfinished to the customer and scores as spam)."""
    text = one_line(subject)
    if text is None:
        return "Re:"
    stripped = _REPLY_PREFIX.sub("", text).strip()
    return f"Re: {stripped}" if stripped else "Re:"


def references_for(thread: Thread) -> list[str]:
    """Return the References of a reply: the parent's references, then the parent's id."""
    ids = [i for i in dict.fromkeys([*thread.references, thread.in_reply_to or ""]) if i]
    ids = [i for i in ids if is_msgid(i)]
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def text_to_html(text: str) -> str:
    """Render plain text as simple HTML: escaped, paragraphs and line breaks kept."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    rendered = "".join(
        "<p>" + html.escape(p).replace("\n", "<br>\n") + "</p>\n" for p in paragraphs if p
    )
    return f"<!DOCTYPE html>\n<html><body>\n{rendered}</body></html>\n"


def mailbox(address: str, display_name: str | None = None) -> Address:
    """Return a header-safe address; raise ValueError for anything but one plain address."""
    if any(c in address for c in "\r\n,;<>") or "@" not in address:
        raise ValueError("not a single email address")
    return Address(display_name=one_line(display_name) or "", addr_spec=address.strip())


def compose_reply(
    *,
    message_id: str,
    sender: Address,
    recipient: Address,
    text: str,
    now: datetime,
    subject: str | None = None,
    verbatim_subject: bool = False,
    thread: Thread = Thread(),
    html_body: str | None = None,
    files: Sequence[OutboundFile] = (),
) -> EmailMessage:
    """Build a reply (or a first message when `thread` is empty) ready for SMTP.

    A reply's subject becomes `Re: <subject>` unless `verbatim_subject` (an agent's explicit
    choice) says to keep it as written.
    """
    msg = EmailMessage(policy=_POLICY)
    msg["Message-ID"] = message_id
    msg["Date"] = format_datetime(now)
    msg["From"] = sender
    msg["To"] = recipient
    if thread.in_reply_to and is_msgid(thread.in_reply_to):
        msg["In-Reply-To"] = thread.in_reply_to
    references = references_for(thread)
    if references:
        msg["References"] = " ".join(references)
    replying = thread.in_reply_to is not None and not verbatim_subject
    title = reply_subject(subject) if replying else one_line(subject)
    if title:
        msg["Subject"] = title
    msg.set_content(text)
    msg.add_alternative(html_body if html_body is not None else text_to_html(text), subtype="html")
    for item in files:
        maintype, _, subtype = item.mime_type.partition("/")
        if not subtype:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(
            item.content,
            maintype=maintype,
            subtype=subtype,
            filename=one_line(item.filename) or "attachment",
        )
    return msg


def thread_from_extra(extra: Mapping[str, object]) -> Thread | None:
    """Read the threading facts the core put into `message.extra` (see the package doc).

    The core sends them nested, `extra["thread"] = {"in_reply_to", "references", "subject"}`,
    with `references` listing every provider id of the conversation in order (our own
    outbound Message-IDs included); the flat keys `in_reply_to` / `references` / `subject`
    are still read when there is no usable nested block, for callers that set them directly.
    """
    nested = extra.get("thread")
    if isinstance(nested, Mapping):
        found = _thread_from(nested)
        if found is not None:
            return found
    return _thread_from(extra)


def _thread_from(values: Mapping[str, object]) -> Thread | None:
    parent = values.get("in_reply_to")
    refs = values.get("references")
    parent_ids = msgid_list(parent) if isinstance(parent, str) else []
    if isinstance(refs, str):
        ref_ids = msgid_list(refs)
    elif isinstance(refs, list | tuple):
        ref_ids = [i for r in refs if isinstance(r, str) for i in msgid_list(r)]
    else:
        ref_ids = []
    # Provider ids that are not Message-IDs (a content hash for mail that had none) are not
    # usable in a header: msgid_list dropped them; drop duplicates, keeping the first place.
    ref_ids = list(dict.fromkeys(ref_ids))
    if not parent_ids and not ref_ids:
        return None
    subject = values.get("subject")
    return Thread(
        in_reply_to=parent_ids[0] if parent_ids else ref_ids[-1],
        references=tuple(ref_ids),
        subject=subject if isinstance(subject, str) else None,
    )


def continue_thread(thread: Thread, parent: Thread | None) -> Thread:
    """Prefix `thread`'s references with those of the mail it answers, when we know them.

    The core lists the ids of *this* conversation only; a reply that opened a new
    conversation (its old one was closed) still carries the whole earlier chain in its own
    References, and RFC 5322 3.6.4 builds a reply's References from the parent's. `parent`
    is what the channel remembered of the customer's latest mail; it is used only when it is
    the very mail `thread` answers.
    """
    if parent is None or parent.in_reply_to != thread.in_reply_to or not parent.references:
        return thread
    # The conversation's own order is authoritative; ids only the parent knew are older
    # (an earlier conversation), so they go first.
    known = set(thread.references)
    older = [i for i in dict.fromkeys(parent.references) if i not in known]
    merged = (*older, *thread.references)
    return Thread(in_reply_to=thread.in_reply_to, references=merged, subject=thread.subject)
