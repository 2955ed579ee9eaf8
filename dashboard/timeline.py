"""One job as the detail page shows it: a timeline, redacted data, and where it went in Slack."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bullmq import Job

from slackq.job_index import JobFields
from slackq.logging import redact, redact_value

_CHANNEL = re.compile(r"[A-Z0-9]{1,32}")
_TS = re.compile(r"\d{1,12}\.\d{1,8}")
MAX_STACK_LINES = 40


@dataclass(frozen=True)
class Step:
    label: str
    at_ms: int | None
    detail: str = ""


@dataclass(frozen=True)
class JobView:
    id: str
    name: str
    state: str
    fields: JobFields
    data: Any
    data_json: str
    opts_json: str
    attempts: int
    failed_reason: str
    stacktrace: list[str]
    timeline: list[Step]
    effects: list[dict[str, Any]]
    slack_link: str | None


def job_view(job: Job, state: str, effects: list[dict[str, Any]]) -> JobView:
    data = job.data if isinstance(job.data, dict) else {}
    redacted = redact_value(data)
    fields = JobFields.of(str(job.name), redacted)
    return JobView(
        id=str(job.id), name=str(job.name), state=state, fields=fields, data=redacted,
        data_json=json.dumps(redacted, indent=2, sort_keys=True, ensure_ascii=False),
        opts_json=json.dumps(redact_value(dict(job.opts or {})), indent=2, sort_keys=True),
        attempts=int(job.attemptsMade or 0),
        failed_reason=redact(str(job.failedReason or "")),
        stacktrace=[redact(str(line)) for line in (job.stacktrace or [])][-MAX_STACK_LINES:],
        timeline=timeline(job, data, state, effects),
        effects=effects,
        slack_link=slack_link(data, effects),
    )


def timeline(job: Job, data: dict[str, Any], state: str,
             effects: list[dict[str, Any]]) -> list[Step]:
    """Slack event time -> stored -> last attempt started -> Slack calls -> finished."""
    steps = [Step("Slack event", _event_ms(data))] if _event_ms(data) else []
    steps.append(Step("stored", int(job.timestamp or 0) or None))
    attempts = int(job.attemptsMade or 0)
    if job.processedOn:
        steps.append(Step("last attempt started", int(job.processedOn),
                          f"attempt {max(attempts, 1)}"))
    for effect in effects:
        done = effect.get("done")
        detail = ("done" if done else "begun, Slack's answer not recorded"
                  if effect["unsettled"] else "not done")
        steps.append(Step(f"Slack call {effect['name']}", _ts_ms(done), detail))
    if job.finishedOn:
        label = "failed" if state == "failed" else "finished"
        steps.append(Step(label, int(job.finishedOn), f"after {attempts} attempt(s)"))
    return steps


def _event_ms(data: dict[str, Any]) -> int | None:
    event = data.get("event")
    ts = event.get("event_ts") or event.get("ts") if isinstance(event, dict) else None
    if isinstance(ts, str) and _TS.fullmatch(ts):
        return int(float(ts) * 1000)
    event_time = data.get("event_time")
    return int(event_time) * 1000 if isinstance(event_time, int) else None


def _ts_ms(done: Any) -> int | None:
    ts = done.get("ts") if isinstance(done, dict) else None
    return int(float(ts) * 1000) if isinstance(ts, str) and _TS.fullmatch(ts) else None


def slack_link(data: dict[str, Any], effects: list[dict[str, Any]]) -> str | None:
    """A link to the message the job posted, else to the message it came from (if known).

    Only ids of Slack's shape go into the URL: a job's data is attacker-controlled.
    """
    candidates = [effect["done"] for effect in effects if isinstance(effect.get("done"), dict)]
    event = data.get("event")
    if isinstance(event, dict):
        candidates.append({"channel": event.get("channel"), "ts": event.get("ts")})
    for place in candidates:
        channel, ts = place.get("channel"), place.get("ts")
        if isinstance(channel, str) and isinstance(ts, str) and _CHANNEL.fullmatch(channel) \
                and _TS.fullmatch(ts):
            return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return None
