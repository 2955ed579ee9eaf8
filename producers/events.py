"""`POST /slack/events` with a JSON body: the Events API.

* `url_verification`: answer the challenge, no job.
* `event_callback`: one job named after the event type, id `event_id`, data the whole envelope
  but Slack's legacy `token` (`slackq.contract.DROPPED_DATA_FIELDS`).
* `app_rate_limited`: Slack tells us it dropped events; logged and counted, no job.
* any other type: 200 with no job, logged (Slack must not count it as a failed delivery).
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.responses import JSONResponse, Response

from producers.body import log_text, required_text
from producers.errors import MalformedRequest
from producers.jobs import Outcome, SlackJob, checked_job_id
from producers.metrics import ProducerMetrics
from slackq.contract import stored_data

log = structlog.get_logger(__name__)


def event_outcome(payload: dict[str, Any], metrics: ProducerMetrics) -> Outcome:
    """What one verified Events API request becomes."""
    kind = payload.get("type")
    if kind == "event_callback":
        return _event_job(payload)
    if kind == "url_verification":
        challenge = payload.get("challenge")
        if not isinstance(challenge, str):
            raise MalformedRequest("url_verification without a challenge")
        return JSONResponse({"challenge": challenge})
    if kind == "app_rate_limited":
        metrics.app_rate_limited.inc()
        log.warning("slack_app_rate_limited", team_id=log_text(payload, "team_id"),
                    minute_rate_limited=payload.get("minute_rate_limited"))
        return Response(status_code=200)
    log.info("slack_request_not_enqueued", type=str(kind)[:64])
    return Response(status_code=200)


def _event_job(payload: dict[str, Any]) -> SlackJob:
    event = payload.get("event")
    if not isinstance(event, dict):
        raise MalformedRequest("event_callback without an event object")
    event_type = required_text(event, "type")
    event_id = required_text(payload, "event_id")
    if not any(isinstance(payload.get(key), str) and payload[key]
               for key in ("team_id", "enterprise_id")):
        # The job contract needs one (slackq.models.EventCallback): the worker could not tell
        # which installation the event is for. Org-wide events may name the org only.
        raise MalformedRequest("event_callback without team_id or enterprise_id")
    return SlackJob(
        name=event_type,
        data=stored_data(payload),
        job_id=checked_job_id(event_id),
        log_context={"team_id": log_text(payload, "team_id"),
                     "enterprise_id": log_text(payload, "enterprise_id"),
                     "event_id": log_text(payload, "event_id")},
    )
