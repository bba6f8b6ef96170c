"""An inbound email's attachment, read back from the message the gateway stored.

Email has no media server to fetch from: the parts travel inside the message, and ingest keeps
the whole message in `raw` (Latin-1 text that gives back the exact bytes) and names each
attachment by its MIME path (`part:1.2`, see `mime.py`). Oversize attachments were cut out of
`raw` before storing (no `media_id`), so they cannot be served. The part's SHA-256, recorded at
ingest, is checked so a download is exactly what arrived.
"""

from __future__ import annotations

import hashlib
from email.message import Message as MimePart
from email.parser import BytesParser

from gateway.channels import MediaContent
from gateway.errors import PermanentChannelError
from gateway.model import Attachment, Message
from plugins.email.headers import READ_POLICY
from plugins.email.mime import part_bytes
from plugins.email.parse import RAW_ENCODING

PART_PREFIX = "part:"


def attachment_content(message: Message, attachment: Attachment) -> MediaContent:
    """The bytes and type of `attachment` from `message.raw`; PermanentChannelError if gone."""
    media_id = attachment.media_id or ""
    if not media_id.startswith(PART_PREFIX):
        raise PermanentChannelError("this attachment was too large to keep; ask for it again")
    if not isinstance(message.raw, str):
        raise PermanentChannelError("the message was stored without its content")
    path = media_id[len(PART_PREFIX) :]
    tree = BytesParser(policy=READ_POLICY).parsebytes(message.raw.encode(RAW_ENCODING))
    part = _part_at(tree, path)
    if part is None:
        raise PermanentChannelError(f"the message has no part {path}")
    data = part_bytes(part)  # decoded as ingest decoded it when it recorded the hash
    if attachment.sha256 and hashlib.sha256(data).hexdigest() != attachment.sha256:
        raise PermanentChannelError(f"part {path} is not the file that arrived")
    return MediaContent(data, attachment.mime_type or part.get_content_type())


def _branches(part: MimePart) -> list[MimePart] | None:
    """A multipart's children, as `mime._leaves` walks them (a message/rfc822 part is a leaf)."""
    children = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(children, list):
        return [child for child in children if isinstance(child, MimePart)]
    return None


def _part_at(tree: MimePart, path: str) -> MimePart | None:
    """The leaf at a MIME path as `mime._leaves` numbers them ("1" for a single-part message)."""
    if _branches(tree) is None:
        return tree if path == "1" else None
    part = tree
    for step in path.split("."):
        children = _branches(part)
        if children is None or not (step.isascii() and step.isdigit()):
            return None
        if not 0 < int(step) <= len(children):
            return None
        part = children[int(step) - 1]
    return None if _branches(part) is not None else part
