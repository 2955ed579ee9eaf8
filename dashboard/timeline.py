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
_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*:)")
MAX_LOG_CHARS = 1000


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
    logs: list[str]
    log_count: int


def job_view(job: Job, state: str, effects: list[dict[str, Any]],
             logs: tuple[list[str], int] = ([], 0)) -> JobView:
    """The detail page's job; `logs`: the newest of its job log lines (`Job.log`) and how many
    it has."""
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
        logs=[redact(str(line))[:MAX_LOG_CHARS] for line in logs[0]],
        log_count=logs[1],
    )


def timeline(job: Job, data: dict[str, Any], state: str,
             effects: list[dict[str, Any]]) -> list[Step]:
    """Slack event time -> stored -> each attempt -> Slack calls -> finished.

    BullMQ keeps one start time per job (`processedOn`, overwritten by each start), so only the
    last attempt has one; an earlier attempt is known by its stack trace (one per failed
    attempt, its last line the error) for as many as the job's `stackTraceLimit` kept. Runs
    that were not attempts (a deferral by pacing, a run lost by a stalled worker) are counted
    from `attemptsStarted` and `stalledCounter`, without times.
    """
    steps = [Step("Slack event", _event_ms(data))] if _event_ms(data) else []
    stored = int(job.timestamp or 0) or None
    steps.append(Step("stored", stored))
    steps += attempt_steps(job, state, stored)
    for effect in effects:
        done = effect.get("done")
        detail = ("done" if done else "begun, Slack's answer not recorded"
                  if effect["unsettled"] else "not done")
        steps.append(Step(f"Slack call {effect['name']}", _ts_ms(done), detail))
    if job.finishedOn:
        label = "failed" if state == "failed" else "finished"
        attempts = int(job.attemptsMade or 0)
        steps.append(Step(label, int(job.finishedOn), f"after {attempts} attempt(s)"))
    return steps


def attempt_steps(job: Job, state: str, stored: int | None) -> list[Step]:
    """One step per attempt: the failed ones with their error, the last run with its start."""
    made = int(job.attemptsMade or 0)
    failed = made - 1 if state == "completed" else made  # attempts that ended in a failure
    traces = [str(trace) for trace in (job.stacktrace or [])][-failed:] if failed > 0 else []
    errors = {failed - len(traces) + 1 + n: _last_line(trace) for n, trace in enumerate(traces)}
    # The attempt `processedOn` belongs to: the running one, else the last one that ran.
    last = made + 1 if state == "active" else made
    steps = [Step(f"attempt {number} failed", None,
                  f"time not kept by BullMQ; {errors.get(number, _NOT_KEPT)}")
             for number in range(1, min(failed, last - 1) + 1)]
    if job.processedOn:
        started = int(job.processedOn)
        label = f"attempt {last} started" if last else "last run started"
        detail = "the first start" if int(job.attemptsStarted or 0) == 1 else "a later start"
        if int(job.attemptsStarted or 0) == 1 and stored:
            detail += f", {(started - stored) / 1000:.3f} s after it was stored"
        if 0 < last <= failed:
            detail += f"; failed: {errors.get(last, _NOT_KEPT)}"
        steps.append(Step(label, started, detail))
    extra = int(job.attemptsStarted or 0) - last
    stalled = int(job.stalledCounter or 0)
    if extra > 0 or stalled:
        steps.append(Step("runs that were not attempts", None,
                          f"{max(extra, 0)} start(s) more than attempts (deferred by pacing, "
                          f"or lost by a worker); found stalled {stalled} time(s)"))
    return steps


_NOT_KEPT = "its error was not kept (the job's stackTraceLimit)"


def _last_line(trace: str) -> str:
    """A stack trace's error line (its last non-empty line), redacted and bounded."""
    lines = [line for line in trace.splitlines() if line.strip()]
    # "package.module.SomeError: text" -> "SomeError: text"
    last = _QUALIFIED.sub(r"\1", lines[-1].strip()) if lines else ""
    return redact(last)[:300]


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
