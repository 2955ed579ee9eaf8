"""What one Slack request becomes: a job to store before the acknowledgement, or an answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from producers.errors import MalformedRequest
from slackq.contract import InvalidJobId, validate_job_id

# The usual acknowledgement: one object for every job (a Response is not changed once built, and
# building one per request cost ~2 us).
OK = Response(status_code=200)


@dataclass(frozen=True)
class SlackJob:
    """One BullMQ job for one Slack request, and the reply Slack gets once it is stored.

    `log_context` holds what identifies the request in logs (`team_id`, `event_id` or
    `trigger_id`); the job id is bound next to it.
    """

    name: str
    data: dict[str, Any]
    job_id: str
    log_context: dict[str, str | None] = field(default_factory=dict)
    ack: Response = OK


def checked_job_id(job_id: str) -> str:
    """`job_id` if Node BullMQ accepts it too (no ':', not integer-like); else 400."""
    try:
        return validate_job_id(job_id)
    except InvalidJobId as exc:
        # The message names the rule broken, not the (caller-supplied) id.
        rule = str(exc).rsplit(" ", 1)[-1]
        raise MalformedRequest(f"job id derived from the request is not valid for BullMQ: {rule}"
                               ) from None


Outcome = SlackJob | Response
"""A kind module's verdict: store this job then acknowledge, or answer now without a job."""
