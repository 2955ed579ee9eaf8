"""structlog set-up: JSON in production, readable lines in a terminal.

All global logging state is changed here, through `structlog.configure()`, once per process.
With no `LOG_FORMAT` the format follows stderr: readable lines on a terminal, JSON lines
otherwise (a platform's log collector, a pipe, a file).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Slack tokens (xoxb-, xoxp-, xapp-...) and passwords inside URLs (user:password@ or
# ?password=) must never reach a log line, tracebacks included.
_TOKEN = re.compile(r"xox[a-z]-[0-9A-Za-z-]+|xapp-[0-9A-Za-z-]+")
_URL_PASSWORD = re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]+@")
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s'\"]+", re.IGNORECASE)
_QUIET_LOGGERS = {"sqlalchemy": logging.WARNING, "aiosqlite": logging.INFO,
                  "asyncpg": logging.INFO}
_REDACT_KEYS = frozenset({"token", "password", "signing_secret", "secret", "authorization"})


def redact(text: str) -> str:
    """Remove token-shaped strings and URL passwords from free text."""
    # Substring tests first: most values (ids, names) hold neither, and `in` is ~20x cheaper.
    if "xox" in text or "xapp-" in text:
        text = _TOKEN.sub("xox?-***", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    if "=" in text and "password=" in text.lower():
        text = _QUERY_PASSWORD.sub(r"\1***", text)
    return text


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():  # only values change: safe while iterating
        if key.lower() in _REDACT_KEYS:
            event_dict[key] = "***"
        elif isinstance(value, str) and value != (clean := redact(value)):
            event_dict[key] = clean
    return event_dict


def resolve_log_format(log_format: str | None, stream: TextIO | None = None) -> str:
    """`json` or `console`: the one asked for, else `console` only when `stream` is a terminal."""
    if log_format is not None:
        return log_format
    stream = sys.stderr if stream is None else stream
    return "console" if stream.isatty() else "json"


def configure_logging(log_format: str | None = None, log_level: str = "info") -> None:
    """Configure structlog and route stdlib logging (uvicorn, bullmq) through the same renderer.

    `log_format` None picks the format from stderr (see `resolve_log_format`).
    """
    log_format = resolve_log_format(log_format)
    level = logging.getLevelName(log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before redaction: an exception's message may hold a URL.
        structlog.processors.format_exc_info,
        _redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(),
                                           exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() per line, newline included (print() makes two): the processes of a dyno
        # share stderr, and two lines written at once must not interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Loggers whose chatty levels print secrets, whatever LOG_LEVEL says: SQLAlchemy's info lines
    # and aiosqlite's debug lines hold statements' parameters (OAuth states, stored tokens).
    # slack-sdk's OAuth client has its own quiet logger (slackq/slack_oauth.py).
    for name, floor in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(level, floor))
