"""Time-ordered identifiers (ULID layout): sortable by creation time, unique across processes."""

from __future__ import annotations

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


# Every pair of Crockford digits (10 bits), so encoding takes one lookup per two digits: base64's
# base32 encoder is pure Python in 3.11, and ids are made on every hot path.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode(value: int, length: int) -> str:
    """Encode `value` as `length` Crockford base32 digits (5 bits each), most significant first."""
    pairs = _PAIRS
    even = length + length % 2  # an odd length is encoded one digit longer, then trimmed
    text = "".join([pairs[(value >> shift) & 1023] for shift in range(5 * even - 10, -1, -10)])
    return text[even - length :]


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
    return _encode((ms << 80) | rand, 26)


def new_id(prefix: str) -> str:
    """Return a prefixed time-ordered id such as `c_01J...` (conversation) or `m_01J...`."""
    return f"{prefix}_{ulid()}"
