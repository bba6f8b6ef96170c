"""How ingest keeps a contact's display name (gateway.sink.shown_name): the customer's own
words, shown in every agent's inbox, so without what would spoil them there."""

from __future__ import annotations

import pytest

from gateway.sink import MAX_DISPLAY_NAME, shown_name


def test_a_name_that_fits_is_kept_as_it_is() -> None:
    for name in ("Ana", "a" * MAX_DISPLAY_NAME, "😀" * MAX_DISPLAY_NAME, "محمد", "Zoë"):
        assert shown_name(name) == name


def test_a_longer_name_is_cut_with_an_ellipsis() -> None:
    assert shown_name("a" * 201) == "a" * 199 + "…"
    assert shown_name("😀" * 201) == "😀" * 199 + "…"  # characters, not UTF-16 halves


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("a" * 197 + "👨\u200d👩\u200d👧" + "x" * 10, "a" * 197),  # a family: all or nothing
        ("a" * 198 + "👍🏽" + "x" * 10, "a" * 198),  # a skin tone stays with its hand
        ("a" * 198 + "🇧🇷🇦🇷" + "x", "a" * 198),  # never half a flag
        ("a" * 197 + "🇧🇷🇦🇷" + "x", "a" * 197 + "🇧🇷"),
        ("e\u0301" * 101, "e\u0301" * 99),  # an accent stays on its letter
    ],
)
def test_the_cut_falls_between_two_visible_characters(name: str, kept: str) -> None:
    """Audit: cut by code points, a name ended in a dangling joiner, half a flag, or a
    letter without its accent."""
    assert shown_name(name) == kept + "…"


def test_control_and_reordering_characters_are_dropped() -> None:
    """Audit: a NUL and an escape sequence were stored as they came; a right-to-left override
    reverses everything after it wherever the name is shown."""
    assert shown_name("An\x00a\x1b\u202eevil\u2066x\u2069\n") == "Ana" + "evilx"
