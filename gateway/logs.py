"""structlog configured once: JSON lines (orjson) on stderr, context bound per request.

Message bodies and secrets are never passed to the logger at info level; the request id,
channel, conversation id and message id are, so one request's lines can be followed.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog
from aiohttp import http_exceptions
from aiohttp.http_exceptions import HttpProcessingError


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot even parse (a bad header, a broken chunk, a request
    line of garbage) as an error with a traceback, as if it were our bug. It is the client's:
    one warning line naming the reason, no traceback (aiohttp has already answered 400).

    The reason never quotes the request: aiohttp's messages embed the offending line, and an
    over-long URL or header carries whatever it carries (`?access_token=`, `Authorization:
    Bearer ...`, Meta's `hub.verify_token`). Secrets never appear in logs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "http.malformed_request", ()
            record.reason = malformed_reason(error)
            record.error = type(error).__name__
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Errors whose message quotes the request line or a header: described, never quoted.
_DESCRIBED: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header longer than the limit"),
    (http_exceptions.BadHttpMethod, "an unknown or malformed method"),
    (http_exceptions.BadStatusLine, "a request line that is not HTTP"),
    (http_exceptions.InvalidHeader, "a malformed header"),
    (http_exceptions.InvalidURLError, "a malformed URL"),
)
MAX_REASON = 200


def malformed_reason(error: HttpProcessingError) -> str:
    """Why aiohttp refused a request, without any of the request's own text."""
    for kind, description in _DESCRIBED:
        if isinstance(error, kind):
            return description
    message = error.message or type(error).__name__
    # Anything else quotes what it saw, if at all, after a quote or a colon and a quote.
    for quote in ("'", '"'):
        message = message.split(quote, 1)[0]
    return message.strip().rstrip(":").strip()[:MAX_REASON] or type(error).__name__


def configure(level: str = "info", *, json: bool = True) -> None:
    """Configure structlog and the stdlib root logger (aiohttp's access log goes through it)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor
    foreign: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        foreign = structlog.processors.JSONRenderer(serializer=_json_text)
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = foreign = structlog.dev.ConsoleRenderer(colors=False)
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib (aiohttp, redis-py): the same JSON lines as ours, with
    # the logger's name and any traceback inside the line, so a log collector parses them all.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, foreign],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                *processors,
            ],
        )
    )
    handler.addFilter(MalformedRequests())
    logging.basicConfig(handlers=[handler], level=max(numeric, logging.WARNING))


def _json_text(value: object, **_: object) -> str:
    return orjson.dumps(value).decode()
