"""The Redis store's URL: redis-py's options plus our own `prefix=`, checked at config load.

redis-py accepts any query option when it parses a URL and fails only when it opens the first
connection (an unknown option is a TypeError from deep inside it): `gateway check` would call
a misspelt `?prefx=` valid and `gateway serve` would die with a traceback. `check_url` builds
the connection object redis-py would use, without connecting, so every option is checked by
redis-py itself, and says what is wrong without repeating the URL (it may hold a password).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_PREFIX = "gw"
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_DATABASE = re.compile(r"[0-9]+")
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']*)'")


def split_url(url: str) -> tuple[str, str]:
    """Take our own `prefix=` option out of the URL (redis-py refuses unknown options)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    kept = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


def check_url(url: str) -> None:
    """Raise ValueError naming the first problem of a Redis store URL (never the URL)."""
    from redis.asyncio import ConnectionPool  # only configs naming Redis need it

    plain, prefix = split_url(url)
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(
            "prefix= must be 1 to 64 letters, digits, '_', '.', ':' or '-' (it starts every key)"
        )
    _check_database(plain)
    try:
        ConnectionPool.from_url(plain).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        unknown = _UNEXPECTED.search(str(exc))
        name = unknown.group(1) if unknown else "?"
        raise ValueError(f"unknown Redis URL option {name!r}") from None
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL: {exc}") from None


def _check_database(url: str) -> None:
    """Refuse a database redis-py would not select as written.

    redis-py reads the path as the database number only when it is one: `/abc` silently
    selects database 0 (another deployment's data, or an empty one), and `/1/2` selects 12.
    It also takes `?db=N`, which wins over the path: `/0?db=3` is database 3. So the path is
    `/` or `/<number>`, a `db=` is a number, and the two may not disagree.
    """
    parts = urlsplit(url)
    chosen: set[int] = set()
    path = parts.path
    if path not in ("", "/"):
        if not _DATABASE.fullmatch(path[1:]):
            raise ValueError("the URL's path is the database number: / or /<number>, such as /0")
        chosen.add(int(path[1:]))
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "db":
            if not _DATABASE.fullmatch(value):
                raise ValueError("db= must be a database number, such as db=0")
            chosen.add(int(value))
    if len(chosen) > 1:
        numbers = " and ".join(str(n) for n in sorted(chosen))
        raise ValueError(
            f"the database is selected more than once, differently ({numbers}): write it once,"
            " as the URL's path (/0)"
        )
