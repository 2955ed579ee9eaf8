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
# Any scheme's user info; the password runs to the LAST '@' before a space or quote, so one
# holding '@' (redis://user:p@ss@host) is hidden whole. Too much hidden beats too little.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s'\"]*:)[^\s'\"]*@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(password=)[^&\s'\"]+", re.IGNORECASE)
_QUIET_LOGGERS = {"sqlalchemy": logging.WARNING, "aiosqlite": logging.INFO,
                  "asyncpg": logging.INFO}
_REDACT_KEYS = frozenset({"token", "password", "signing_secret", "secret", "authorization"})
_REDACT_SUFFIXES = ("_token", "_secret", "_password")
# Nested values (a Slack payload, a list of them) are redacted this deep; deeper, as text.
_MAX_DEPTH = 8


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


def _secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    return lowered in _REDACT_KEYS or lowered.endswith(_REDACT_SUFFIXES)


def redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with secrets removed: strings through `redact`, dicts, lists, tuples and sets
    item by item (a secret-named key's value becomes `***`). Unchanged values are returned as
    they are, so a log line never copies a payload it does not need to."""
    if isinstance(value, str):
        return redact(value)
    if not isinstance(value, dict | list | tuple | set | frozenset):
        return value
    if depth >= _MAX_DEPTH:
        return redact(repr(value))
    if isinstance(value, dict):
        cleaned: dict[Any, Any] = {
            key: "***" if _secret_key(key) else redact_value(item, depth + 1)
            for key, item in value.items()}
        changed = any(cleaned[key] is not item for key, item in value.items())
        return cleaned if changed else value
    items = [redact_value(item, depth + 1) for item in value]
    if all(new is old for new, old in zip(items, value, strict=True)):
        return value
    return type(value)(items) if not isinstance(value, list) else items


# Whether a log field's name is a secret's, by name: the same dozen names recur on every line.
_SECRET_NAMES: dict[str, bool] = {}
_SECRET_NAMES_MAX = 4096  # names come from code, but bound it anyway
# Values that cannot hold a secret (a string without "xox", "xapp-", "@" or "=" neither).
_PLAIN_TYPES = (int, float, bool, type(None))


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # On every log line (one per job at least): names looked up, not lowered and matched, and a
    # string without any of `redact`'s marks not passed to it (~5 -> ~2 us for a job's line).
    for key, value in event_dict.items():  # only values change: safe while iterating
        secret = _SECRET_NAMES.get(key) if isinstance(key, str) else False
        if secret is None:
            secret = _secret_key(key)
            if len(_SECRET_NAMES) < _SECRET_NAMES_MAX:
                _SECRET_NAMES[key] = secret
        if secret:
            event_dict[key] = "***"
        elif type(value) is str:
            if (("xox" in value or "xapp-" in value or "@" in value or "=" in value)
                    and value != (clean := redact(value))):
                event_dict[key] = clean
        elif type(value) in _PLAIN_TYPES:
            continue
        elif (clean := redact_value(value)) is not value:
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
    # The port prints some tracebacks itself (not through logging): they become log lines too.
    # Imported here: BullMQ is ~0.4 s of imports that a process stopping on its settings (or
    # only redacting) does without.
    from slackq.bullmq_seam import route_port_tracebacks

    route_port_tracebacks()
