"""Reading and parsing a Slack request body: media type, a bounded read, strict JSON and forms.

Everything here turns bad input into a `RequestRejected` with the right 4xx status, never into
an unexpected exception: the webhook must answer every request it can read with 2xx, 4xx or 503.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from starlette.types import Receive

from producers.errors import BodyTimeout, BodyTooLarge, MalformedRequest, UnsupportedMediaType
from producers.http_protocol import body_buffered

# Slack's own payloads stay far below this (a message event with many blocks is ~10-50 KB).
# Larger requests are not Slack's: 413 before the whole body is read.
MAX_BODY_BYTES = 1024 * 1024
# Slack forms carry ~15 fields; a form with many more is not Slack's.
MAX_FORM_FIELDS = 100
# The longest request field (team id, trigger id) slackq copies into a log line.
MAX_LOG_FIELD_CHARS = 255

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def media_type(headers: Mapping[str, str], accepted: tuple[str, ...]) -> str:
    """The request's media type (without parameters such as charset), if `accepted`; else 415."""
    value = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if value not in accepted:
        raise UnsupportedMediaType(f"content type must be {' or '.join(accepted)}")
    return value


async def read_body(receive: Receive, headers: Mapping[str, str], within: float,
                    limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body (the signature covers these exact bytes): at most `limit` bytes, else 413
    (from Content-Length before any of it is read); all of it within `within` seconds, else 408.

    A body the server holds whole already (nearly every Slack request: it fits in one packet)
    is read without setting the deadline, which would cost more than the read (~4 us).
    """
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise MalformedRequest("malformed Content-Length")
        if int(declared) > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
    if body_buffered(receive):
        return await _read_chunks(receive, limit)
    try:
        async with asyncio.timeout(within):
            return await _read_chunks(receive, limit)
    except TimeoutError:
        raise BodyTimeout(f"body not received within {within:g} s") from None


async def _read_chunks(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise MalformedRequest("client disconnected before the body was read")
        if chunk := message.get("body", b""):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _no_constants(name: str) -> NoReturn:
    # json accepts NaN/Infinity, but BullMQ serialises job data with allow_nan=False.
    raise MalformedRequest(f"body is not JSON ({name} is not a JSON value)")


def _finite_float(text: str) -> float:
    # `1e999` is valid JSON, but Python reads it as inf, which BullMQ's job data cannot hold.
    value = float(text)
    if not math.isfinite(value):
        raise MalformedRequest("body is not JSON (a number that overflows a float is not a "
                               "JSON value)")
    return value


# One decoder for every request: `json.loads` with hooks builds a new one per call (~1.3 us).
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)


def parse_json_object(raw: bytes | str, what: str = "body") -> dict[str, Any]:
    """A JSON object, strictly (no NaN/Infinity, no number overflowing a float); else 400."""
    try:
        value = _DECODER.decode(_json_text(raw))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        if isinstance(exc, MalformedRequest):
            raise
        raise MalformedRequest(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} is not a JSON object")
    return value


def _json_text(raw: bytes | str) -> str:
    """`raw` as `json.loads` reads it: bytes in the encoding JSON's first bytes show (UTF-8,
    -16 or -32), and no byte order mark on a string."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise ValueError("unexpected UTF-8 BOM")
        return raw
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def parse_form(raw: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a dict of strings; else 400.

    Strict: UTF-8 only, every field `name=value`, no field repeated (Slack never repeats one, and
    a repeated field would make the job's data ambiguous).
    """
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                          errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except ValueError:  # also UnicodeDecodeError, and too many fields
        raise MalformedRequest("body is not a UTF-8 form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise MalformedRequest("form repeats a field")
    return form


def required_text(source: Mapping[str, Any], key: str) -> str:
    """`source[key]` if it is a non-empty, UTF-8-encodable string; else 400.

    Job names and ids go through msgpack and Redis as UTF-8: a JSON `\\ud800` escape would make
    them unencodable, so such a value is bad input, never a server error. Whether an id suits
    BullMQ is `slackq.contract.validate_job_id`'s call alone.
    """
    value = source.get(key)
    if isinstance(value, str) and value and _encodable(value):
        return value
    raise MalformedRequest(f"field {key!r} missing or not a string")


def log_text(source: Mapping[str, Any], key: str) -> str | None:
    """`source[key]` for a log line (team id, trigger id): a short printable string, or None."""
    value = source.get(key)
    if (isinstance(value, str) and 0 < len(value) <= MAX_LOG_FIELD_CHARS and value.isprintable()
            and _encodable(value)):
        return value
    return None


def _encodable(value: str) -> bool:
    if value.isascii():  # nearly every id: no encoding to try
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
