"""The per-key connection cap behind the web chat's and the agent stream's socket limits."""

from __future__ import annotations

from gateway.connlimit import ConnectionCounter


def test_a_key_at_its_cap_is_refused_until_one_of_its_connections_ends() -> None:
    counter = ConnectionCounter(2)
    assert counter.try_open("ana") and counter.try_open("ana")
    assert not counter.try_open("ana")  # refused: nothing counted
    assert counter.open_for("ana") == 2
    assert counter.try_open("bea")  # other keys have caps of their own
    counter.close("ana")
    assert counter.try_open("ana")
    for key in ("ana", "ana", "bea"):
        counter.close(key)
    assert len(counter) == 0  # nothing left behind by keys that came and went


def test_no_cap() -> None:
    counter = ConnectionCounter(None)
    assert all(counter.try_open("ana") for _ in range(10_000))
