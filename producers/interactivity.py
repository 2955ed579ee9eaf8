"""Interactivity (`POST /slack/interactivity`, form-encoded `payload=<JSON>`): one job per payload.

* name `interactive:<type>` (`interactive:block_actions`, `interactive:view_submission`,
  `interactive:shortcut`, `interactive:message_action`, `interactive:view_closed`, ...),
* id `interactive-<trigger_id>` when the payload has a `trigger_id` (Slack issues one per user
  interaction); payloads without one (`view_closed`, `block_suggestion`) get
  `interactive-sha256-<first 32 hex digits of the SHA-256 of the payload JSON>`, which is stable
  across identical deliveries,
* data: the parsed `payload` object (what Slack documents as the payload, and what Bolt hands its
  listeners as `body`) without Slack's legacy `token`; a Node consumer reads `job.data.type`,
  `job.data.user.id`, ... directly.
"""

from __future__ import annotations

import hashlib

from producers.body import log_text, parse_json_object, required_text
from producers.errors import MalformedRequest
from producers.jobs import SlackJob, checked_job_id
from slackq.contract import stored_data

JOB_ID_PREFIX = "interactive-"
JOB_NAME_PREFIX = "interactive:"


def interactive_job(form: dict[str, str]) -> SlackJob:
    """The job for one verified interactivity form."""
    raw = required_payload(form)
    payload = parse_json_object(raw, what="field 'payload'")
    kind = required_text(payload, "type")
    trigger_id = required_text(payload, "trigger_id") if "trigger_id" in payload else None
    if trigger_id is not None:
        job_id = JOB_ID_PREFIX + trigger_id
    else:
        job_id = f"{JOB_ID_PREFIX}sha256-{hashlib.sha256(raw.encode()).hexdigest()[:32]}"
    return SlackJob(
        name=JOB_NAME_PREFIX + kind,
        data=stored_data(payload),
        job_id=checked_job_id(job_id),
        log_context={"team_id": _team_id(payload), "trigger_id": log_text(payload, "trigger_id")},
    )


def required_payload(form: dict[str, str]) -> str:
    """The form's `payload` field (any string; its JSON is checked by the caller)."""
    raw = form.get("payload")
    if raw is None:
        raise MalformedRequest("form has no 'payload' field")
    return raw


def _team_id(payload: dict[str, object]) -> str | None:
    """`team.id`, or `user.team_id` (some payloads, e.g. from Enterprise Grid, lack `team`)."""
    team, user = payload.get("team"), payload.get("user")
    if isinstance(team, dict) and (team_id := log_text(team, "id")):
        return team_id
    if isinstance(user, dict):
        return log_text(user, "team_id")
    return None
