"""Time-ordered identifiers (ULID layout): sortable by creation time, unique across processes."""

from __future__ import annotations

import base64
import os
import random
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
# Uniqueness, not secrecy, is needed here: a PRNG seeded once from the OS is enough, and
# reading os.urandom for every id costs a syscall on the hot path.
_random = random.Random(os.urandom(32))


_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# base64's C base32 encoder, re-lettered to Crockford's alphabet: ids are on every hot path.
_TO_CROCKFORD = bytes.maketrans(_STANDARD.encode(), _ALPHABET.encode())


def _encode(value: int, length: int) -> str:
    """Encode `value` as `length` Crockford base32 digits (5 bits each), most significant first."""
    pad = (-length * 5) % 40  # base32 works on 40-bit groups: left-align the value in them
    raw = (value << pad).to_bytes((length * 5 + pad) // 8, "big")
    return base64.b32encode(raw).translate(_TO_CROCKFORD)[:length].decode()


def ulid(now_ms: int | None = None) -> str:
    """Return a 26-character ULID; ids made in the same millisecond stay strictly increasing."""
    global _last_ms, _last_rand
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = _random.getrandbits(79)
        _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)


def new_id(prefix: str) -> str:
    """Return a prefixed time-ordered id such as `c_01J...` (conversation) or `m_01J...`."""
    return f"{prefix}_{ulid()}"
