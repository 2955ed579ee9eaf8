"""Post one signed sample `app_mention` event to a slackq webhook, as Slack would.

    SLACK_SIGNING_SECRET=... python -m slackq.sample_event [--url URL] [--text TEXT]

A smoke test without a Slack workspace: on your machine it starts one event's round trip
(webhook -> Redis -> worker -> Slack Web API, or the local stand-in that `SLACK_API_URL` points
at); against a deployed webhook it shows the signing secret and the store path work. The body is
an `event_callback` envelope signed with Slack's v0 scheme (slack-sdk's `SignatureVerifier`) and a
fresh `event_id`, so each run is a new job. It prints the answer's status and body and exits 0 on
200, 1 on any other answer, 2 when nothing answered or the secret is missing. The secret is never
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from slackq.errors import ConfigError
from slackq.settings import load_settings

DEFAULT_URL = "http://127.0.0.1:3000/slack/events"
DEFAULT_TEXT = "<@U0SLACKQBOT> hello from slackq sample-event"
TIMEOUT_SECONDS = 10.0
_SHOWN_BODY_CHARS = 500


def sample_envelope(text: str = DEFAULT_TEXT, *, channel: str = "C0SAMPLE01",
                    team_id: str = "T0SAMPLE01", user: str = "U0SAMPLE01") -> dict[str, Any]:
    """An `app_mention` event_callback shaped like Slack's, with a fresh event id."""
    now = time.time()
    ts = f"{now:.6f}"
    # Letters after "Ev" keep the id valid for Node BullMQ too (never integer-like, no ':').
    event_id = "EvSAMPLE" + uuid.uuid4().hex[:12].upper()
    return {
        "token": "sample-event",
        "team_id": team_id,
        "api_app_id": "A0SAMPLE01",
        "event": {"type": "app_mention", "user": user, "text": text, "ts": ts,
                  "channel": channel, "event_ts": ts},
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(now),
        "authorizations": [{"team_id": team_id, "user_id": "U0SLACKQBOT", "is_bot": True}],
    }


def signed_request(url: str, envelope: dict[str, Any], secret: str) -> urllib.request.Request:
    """A POST of the envelope with the headers Slack sends (v0 signature over the raw body)."""
    body = json.dumps(envelope, separators=(",", ":")).encode()
    # slack-sdk (~0.1 s of imports) only here: every `slackq` command imports this module.
    from slack_sdk.signature import SignatureVerifier

    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": timestamp,
               "X-Slack-Signature": signature or "", "User-Agent": "slackq-sample-event"}
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def post(request: urllib.request.Request) -> tuple[int, str]:
    """Send the request; the answer's status and (bounded) body, whatever the status."""
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read(_SHOWN_BODY_CHARS).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(_SHOWN_BODY_CHARS).decode(errors="replace")


def shown_url(url: str) -> str:
    """The URL without user info or query: either may hold a credential."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, for this module's own parser and for a `slackq sample-event` subcommand."""
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the webhook's events URL (default {DEFAULT_URL})")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the mention's text")
    parser.add_argument("--channel", default="C0SAMPLE01", help="the channel id in the event")


def run(args: argparse.Namespace) -> int:
    """Sign and post one event; print what happened. Returns the exit status."""
    try:
        secret = load_settings(require=("SLACK_SIGNING_SECRET",)).signing_secret()
    except ConfigError as exc:
        print(f"sample-event: {exc}", file=sys.stderr)
        return 2
    envelope = sample_envelope(args.text, channel=args.channel)
    try:
        status, body = post(signed_request(args.url, envelope, secret))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"sample-event: no answer from {shown_url(args.url)}: {exc}", file=sys.stderr)
        return 2
    answer = f"{status} {_printable(body)}".rstrip()
    print(f"POST {shown_url(args.url)} event_id={envelope['event_id']} -> {answer}")
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slackq.sample_event",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
