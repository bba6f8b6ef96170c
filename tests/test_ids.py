"""Time-ordered ids: Crockford base32 ULIDs that sort by creation and never repeat."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway import ids

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def reference(value: int, length: int) -> str:
    digits = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


@given(st.integers(0, 2**50 - 1), st.integers(0, 2**80 - 1))
def test_encoding_matches_the_ulid_layout(ms: int, rand: int) -> None:
    assert ids._encode(ms, 10) == reference(ms, 10)
    assert ids._encode(rand, 16) == reference(rand, 16)


def test_ids_sort_by_creation_and_are_unique() -> None:
    made = [ids.new_id("m") for _ in range(20_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(i.startswith("m_") and len(i) == 28 for i in made)


def test_same_millisecond_still_increases() -> None:
    first, second = ids.ulid(1_800_000_000_000), ids.ulid(1_800_000_000_000)
    assert first < second and first[:10] == second[:10]
