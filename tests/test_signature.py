"""Signature verification against Slack's published known-answer vector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slack_sdk.signature import Clock

from producers.verify import RequestVerifier

VECTOR = json.loads((Path(__file__).parent / "data/slack-signing-vector.json").read_text())
SECRET = VECTOR["signing_secret"]
BODY = VECTOR["body"].encode()
TIMESTAMP = VECTOR["timestamp"]
SIGNATURE = VECTOR["expected_signature"]


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def headers(timestamp: str = TIMESTAMP, signature: str = SIGNATURE) -> dict[str, str]:
    return {"x-slack-request-timestamp": timestamp, "x-slack-signature": signature}


@pytest.fixture
def verifier() -> RequestVerifier:
    return RequestVerifier(SECRET, clock=FixedClock(int(TIMESTAMP) + 10))


def test_published_vector_is_valid(verifier: RequestVerifier) -> None:
    assert verifier.is_valid(BODY, headers())


def test_one_changed_body_byte_is_invalid(verifier: RequestVerifier) -> None:
    assert not verifier.is_valid(BODY.replace(b"roadrunner", b"roadrunnes"), headers())


def test_other_secret_is_invalid() -> None:
    other = RequestVerifier(SECRET[:-1] + "6", clock=FixedClock(int(TIMESTAMP)))
    assert not other.is_valid(BODY, headers())


@pytest.mark.parametrize("skew", [-301, 301, 10_000])
def test_timestamp_outside_five_minutes_is_invalid(skew: int) -> None:
    clock = FixedClock(int(TIMESTAMP) + skew)
    assert not RequestVerifier(SECRET, clock=clock).is_valid(BODY, headers())


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_inside_five_minutes_is_valid(skew: int) -> None:
    clock = FixedClock(int(TIMESTAMP) + skew)
    assert RequestVerifier(SECRET, clock=clock).is_valid(BODY, headers())


@pytest.mark.parametrize(
    "bad",
    [
        {"x-slack-signature": SIGNATURE},
        {"x-slack-request-timestamp": TIMESTAMP},
        {},
        headers(timestamp="not-a-number"),  # slack-sdk's own verifier raises on this
        headers(timestamp="1e9"),
        headers(timestamp="١٥٣١٤٢٠٦١٨"),  # Arabic-Indic digits: isdigit() but not ASCII
        headers(timestamp=""),
        headers(signature="v0=" + "0" * 64),
        headers(signature="v1=" + SIGNATURE[3:]),
    ],
)
def test_missing_or_malformed_headers_are_invalid(
    verifier: RequestVerifier, bad: dict[str, str]
) -> None:
    assert not verifier.is_valid(BODY, bad)
