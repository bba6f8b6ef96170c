"""A server's WebSocket text frame, as bytes made once and written to many sockets.

A frame a server sends is not masked (RFC 6455, section 5.1), and without per-message
compression it holds nothing that depends on the connection: the same bytes are a valid frame
on every socket. An event that goes to hundreds of agent streams is therefore framed once, and
each stream's queued frames go out in one write (`gateway.wsdrop.Sender.frames`), instead of
aiohttp framing (and, with permessage-deflate, compressing) it again for every socket and
making one system call per frame per socket.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
"""FIN set, no RSV bits (not compressed), opcode 1 (text)."""


def text_frame(payload: bytes) -> bytes:
    """One complete, unfragmented, unmasked text frame carrying `payload` (UTF-8 text)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN_TEXT, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload
