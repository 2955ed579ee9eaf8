"""Job ids valid for both BullMQ implementations: Node's rules checked against Node itself.

Node BullMQ 6.7.0 refuses a custom `jobId` that is integer-like (`String(parseInt(id, 10)) ===
id`) or that contains ':' (unless it splits into exactly three parts, kept for legacy repeatable
jobs). The Python port checks neither, so `slackq.contract.validate_job_id` does, more strictly
(any ':' and any all-digit id are refused), and the producer answers 400 for such an event_id.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
import redis
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from slackq.contract import InvalidJobId, job_options, validate_job_id
from slackq.settings import Settings
from tests.interop import node_config, node_script, node_skip_reason
from tests.prerequisites import requires
from tests.slack_requests import app_mention_envelope
from tests.webhook_client import (
    block_actions_payload,
    command_form,
    interactive_form,
    post_event,
    post_form,
    webhook,
)

pytestmark = pytest.mark.interop
needs_node = requires("Node BullMQ interop", node_skip_reason())

PROBE_QUEUE = "id-probe"

# Ids on both sides of Node's rules, including its quirks ("007" and "a:b:c" pass Node).
ID_TABLE = [
    "123", "0", "-5", "9007199254740993", "a:b", "Ev:1", ":", "a:b:c:d", "Ev0ABC123", "007",
    "+5", "1e3", "12a", "-0", "1.5", " 5", "a:b:c", "Ev0INTEROP01", "T1:C2:1700000000.0001",
    "NaN", "123456789012345680000", "123456789012345678901", "Infinity", "\u0661\u0662",
    " -6898", "-1e3", "-Infinity", "-.5", "-0.0e5", "-5x",
]


def js_parse_int_string(text: str) -> str:
    """`String(parseInt(text, 10))` in JavaScript: shortest round-trip digits, NaN, exponents."""
    match = re.match(r"[\s\ufeff]*([+-]?)([0-9]+)", text)
    if match is None:
        return "NaN"
    value = float(int(match.group(1) + match.group(2)))
    if value == 0:
        return "0"
    if abs(value) >= 1e21:
        return repr(value)  # JS switches to exponent notation too ("1.2e+21")
    return str(int(Decimal(repr(value))))


def js_number_below_zero(text: str) -> bool:
    """`Number(text) < 0` in JavaScript, for the signed decimals (and -Infinity) it accepts."""
    match = re.fullmatch(r"[\s\ufeff]*(-(?:Infinity|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))"
                         r"[\s\ufeff]*", text)
    return match is not None and float(match.group(1).replace("Infinity", "inf")) < 0


def node_would_accept(job_id: str) -> bool:
    """Node BullMQ 6.7.0's `Job.validateOptions` rule for a custom jobId, transcribed, and its
    `addJob`, which takes a script reply below zero (the id, as JavaScript compares it) for an
    error code."""
    if js_parse_int_string(job_id) == job_id or js_number_below_zero(job_id):
        return False
    return ":" not in job_id or len(job_id.split(":")) == 3


def slackq_accepts(job_id: str) -> bool:
    try:
        validate_job_id(job_id)
    except InvalidJobId:
        return False
    return True


async def node_verdicts(settings: Settings, ids: list[str]) -> dict[str, str | None]:
    """Ask Node BullMQ to add a job with each id: None if it accepted it, else its error."""
    jobs = [{"name": "probe", "data": {}, "opts": {"jobId": job_id}} for job_id in ids]
    config = node_config(settings.redis_url, PROBE_QUEUE, settings.queue_prefix, jobs=jobs)
    async with node_script("producer", config) as node:
        messages = await node.finish()
    verdicts = {m["jobId"]: (None if m["event"] == "added" else m["error"])
                for m in messages if m["event"] in ("added", "rejected")}
    assert sorted(verdicts) == sorted(set(ids)), messages
    return verdicts


@needs_node
async def test_node_rejects_integer_like_ids_and_colons_and_slackq_rejects_them_too(
    settings: Settings,
) -> None:
    verdicts = await node_verdicts(settings, ID_TABLE)

    assert verdicts["123"] == verdicts["-5"] == "Custom Id cannot be integers"
    assert verdicts["a:b"] == verdicts["Ev:1"] == "Custom Id cannot contain :"
    assert verdicts["0"] == "JobId cannot be '0' or start with '0:'"  # Queue.add's own check
    # `String(parseInt("NaN"))` is "NaN": Node calls that id an integer.
    assert verdicts["NaN"] == "Custom Id cannot be integers"
    assert verdicts["Ev0ABC123"] is None
    # Ids JavaScript reads as negative numbers pass that check, then Node's addJob takes the id
    # the script returns for an error code.
    assert verdicts[" -6898"] == "Unknown code  -6898 error for undefined. addJob"
    for job_id, error in verdicts.items():
        assert (error is None) == node_would_accept(job_id), job_id
        if error is not None:
            assert not slackq_accepts(job_id), f"slackq accepts {job_id!r}, Node refuses it"
    # Where slackq is stricter than Node (on purpose: no ':' at all, no digit-only id).
    assert {i for i in ID_TABLE if node_would_accept(i) and not slackq_accepts(i)} == {
        "007", "-0", "9007199254740993", "123456789012345678901", "\u0661\u0662",
        "a:b:c", "T1:C2:1700000000.0001"}


slack_like_ids = st.from_regex(r"\AEv[0-9A-Z]{8,12}\Z")
adversarial_ids = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.text(alphabet="0123456789:+- .eEvA", max_size=12),
    st.text(max_size=24),
)


@needs_node
def test_the_webhook_only_ever_stores_ids_node_accepts(settings: Settings) -> None:
    """Property: every job any endpoint stores has an id Node accepts; the rest are refused."""
    stored: list[str] = []
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    # The app and its Queue live on one event loop in a portal thread (as Starlette's TestClient
    # does); hypothesis drives plain synchronous examples against it.
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
        webhook(settings)
    ) as web:

        @hypothesis_settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
        @given(kind=st.sampled_from(["event", "command", "interactive"]),
               slack_id=st.one_of(slack_like_ids, adversarial_ids))
        def post(kind: str, slack_id: str) -> None:
            job_id, send = _request(kind, slack_id)
            events = f"{settings.queue_prefix}:{settings.queue_name}:events"
            before = client.xlen(events)
            response = portal.call(send, web)
            if response.status_code == 200:
                # What was stored (or found already stored) is the stream's newest job id; an
                # interaction whose trigger_id is blank gets a payload-hash id instead.
                assert client.xlen(events) > before, (kind, slack_id)
                [(_, entry)] = client.xrevrange(events, count=1)
                stored_id = entry["jobId"]
                assert stored_id == job_id or kind == "interactive", (stored_id, job_id)
                assert node_would_accept(stored_id) and slackq_accepts(stored_id), stored_id
                stored.append(stored_id)
            else:
                assert 400 <= response.status_code < 500, (job_id, response.status_code)
                assert client.xlen(events) == before, job_id

        post()
        # The real Node BullMQ agrees on every id that was stored.
        verdicts = portal.call(node_verdicts, settings, sorted(set(stored)))
    client.close()
    assert {job_id.split("-")[0] for job_id in stored} >= {"command", "interactive"}
    assert {i: e for i, e in verdicts.items() if e is not None} == {}


def _request(kind: str, slack_id: str) -> tuple[str, Callable[[Any], Awaitable[Any]]]:
    """The job id a request of `kind` carrying `slack_id` would get, and how to send it."""
    if kind == "event":
        envelope: dict[str, Any] = {**app_mention_envelope(), "event_id": slack_id}
        return slack_id, partial(post_event, payload=envelope)
    if kind == "command":
        form = command_form(trigger_id=slack_id)
        return f"command-{slack_id}", partial(post_form, path="/slack/commands", form=form)
    form = interactive_form(block_actions_payload(trigger_id=slack_id))
    return f"interactive-{slack_id}", partial(post_form, path="/slack/interactivity", form=form)


def test_job_options_refuse_ids_node_would_refuse() -> None:
    for job_id in ("42", "-1", "a:b", ""):
        with pytest.raises(InvalidJobId):
            job_options(job_id, Settings.model_construct())
