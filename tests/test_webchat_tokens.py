"""Web chat visitor tokens: valid for their ttl, also when the clocks of the node that issued
one and the node that checks it disagree (or the host's clock was stepped back)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from plugins.webchat.tokens import InvalidToken, TokenSigner, VisitorSession

TTL = timedelta(days=30)
T0 = 1_795_000_000.0
SESSION = VisitorSession("site", "v_01ABC", "Ana")


def signer_at(now: list[float], channel: str = "site") -> TokenSigner:
    return TokenSigner("s" * 32, channel, TTL, now=lambda: now[0])


def test_a_token_lives_for_its_ttl() -> None:
    now = [T0]
    token = signer_at(now).issue(SESSION)
    now[0] = T0 + TTL.total_seconds() - 1
    assert signer_at(now).verify(token) == SESSION
    now[0] = T0 + TTL.total_seconds() + 1
    with pytest.raises(InvalidToken, match="expired"):
        signer_at(now).verify(token)


def test_resuming_late_in_a_tokens_life_gives_one_for_a_whole_ttl_more() -> None:
    """What `POST /webchat/{channel}/session` with a token answers: the same visitor, in a
    token that lasts a whole ttl from now. A visitor who comes back within it keeps their chat
    for as long as they keep coming back (the widget keeps the token it is given)."""
    now = [T0]
    first = signer_at(now).issue(SESSION)
    now[0] = T0 + TTL.total_seconds() - 60
    resumed = signer_at(now).issue(signer_at(now).verify(first))
    now[0] = T0 + 2 * TTL.total_seconds() - 120
    assert signer_at(now).verify(resumed) == SESSION
    with pytest.raises(InvalidToken, match="expired"):
        signer_at(now).verify(first)


@pytest.mark.parametrize("behind", [0.5, 1, 2, 300, 3600])
def test_a_token_from_a_clock_ahead_of_ours_is_valid(behind: float) -> None:
    """Node B two seconds behind node A refused every session A opened (`expired`), and the
    widget then wiped the visitor's chat: a token is ours by its signature, whatever the time."""
    issuer, checker = [T0 + behind], [T0]
    token = signer_at(issuer).issue(SESSION)
    assert signer_at(checker).verify(token) == SESSION


def test_a_token_dated_past_a_whole_ttl_ahead_is_refused() -> None:
    issuer, checker = [T0 + TTL.total_seconds() + 10], [T0]
    with pytest.raises(InvalidToken):
        signer_at(checker).verify(signer_at(issuer).issue(SESSION))


def test_forged_and_foreign_tokens_are_refused() -> None:
    now = [T0]
    token = signer_at(now).issue(SESSION)
    with pytest.raises(InvalidToken, match="not valid"):
        signer_at(now).verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(InvalidToken):  # another channel's signer: another salt
        signer_at(now, channel="other").verify(token)
