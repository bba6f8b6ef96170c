"""Durations as ops write them in config.yaml: `30s`, `5m`, `24h`, `2d`, `1h30m`, `250ms`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
"""A bare number written as text (`"30"`, and what `${GRACE}` expands to): seconds, as the same
number unquoted is; every `${VAR}` expands to text, so otherwise `30` would work only inline."""
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


MAX_DAYS = 36_500
"""The longest duration a config may hold (100 years): past it a timedelta overflows, and no
timer of ours means anything longer."""
TOO_LONG = f"a duration can be at most {MAX_DAYS} days"


def parse_duration(value: Any) -> timedelta:
    """Parse `30s`, `5m`, `24h`, `1h30m` (or a number of seconds, as a number or as text)
    into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 24h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _bounded(float(value))
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 5m or 24h")
    text = value.strip().lower()
    if _SECONDS.fullmatch(text):
        return _bounded(float(text))
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 30s, 5m or 24h, got {value!r}")
    return _bounded(total)


def _bounded(seconds: float) -> timedelta:
    # `not <=` also catches NaN (YAML's .nan), which compares false to everything.
    if not seconds <= MAX_DAYS * 86400:
        raise ValueError(TOO_LONG)
    return timedelta(seconds=seconds)


UNDER_TWO_DAYS = (("h", 3600), ("m", 60))


def format_duration(value: timedelta) -> str:
    """Render a timedelta back in the config's notation (`90s` -> `1m30s`).

    Days are used from two days on: WhatsApp's window reads `24h`, as everyone writes it,
    not `1d`, and `36h` stays `36h`; a week is `7d`.
    """
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    parts = []
    units = (("d", 86400), ("h", 3600), ("m", 60)) if seconds >= 2 * 86400 else UNDER_TWO_DAYS
    for unit, size in units:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{int(count)}{unit}")
    if seconds:
        parts.append(f"{seconds:g}s")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _positive_timer(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s; null turns this timer off")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be above zero: a timeout, an interval, a time-to-live. A zero poll
interval or timeout is a mistake, not a wish: refused at load with its key path."""

TimerDuration = Annotated[Duration, AfterValidator(_positive_timer)]
"""An optional timer's delay (`no_agent_timeout`, `requeue_after`): null turns it off, and zero
is refused rather than read as off too (a falsy timedelta), which nobody writing `0s` means."""


def retry_span(
    attempts: int, initial: timedelta, maximum: timedelta, try_timeout: timedelta
) -> timedelta:
    """The longest a sequence of `attempts` tries can take: every try cut off by `try_timeout`,
    every wait between two at its exponential cap (`initial` x 2^n, at most `maximum`)."""
    total, wait = try_timeout, initial
    for _ in range(attempts - 1):
        total += min(wait, maximum) + try_timeout
        wait *= 2
    return total
