"""Slack request signature verification (v0 HMAC-SHA256 over the raw body, 5-minute window)."""

from __future__ import annotations

from collections.abc import Mapping

from slack_sdk.signature import Clock, SignatureVerifier


class RequestVerifier:
    """Checks `X-Slack-Signature` and `X-Slack-Request-Timestamp` with slack-sdk's verifier.

    slack-sdk raises on a non-numeric timestamp; here every malformed header is simply invalid.
    """

    def __init__(self, signing_secret: str, clock: Clock | None = None) -> None:
        self._verifier = SignatureVerifier(signing_secret, clock=clock or Clock())

    def is_valid(self, body: bytes, headers: Mapping[str, str]) -> bool:
        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
            return False
        try:
            return self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
        except (ValueError, TypeError, OverflowError):
            return False
